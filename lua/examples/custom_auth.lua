-- custom_auth: lets a request through only when its token header holds one of the tokens in
-- the configuration; 401 otherwise. Enable with
--   ando: {lua: {plugins: [examples.custom_auth]}}
-- and use as
--   plugins: {custom-auth: {tokens: [s3cret], header: x-token}}

return {
    name = "custom-auth",
    priority = 2600,
    version = "0.1",
    schema = {
        type = "object",
        properties = {
            tokens = {
                description = "Accepted tokens.",
                type = "array",
                items = { type = "string", minLength = 1 },
                minItems = 1,
            },
            header = {
                description = "The request header carrying the token.",
                type = "string",
                default = "x-token",
            },
        },
        required = { "tokens" },
        additionalProperties = false,
    },

    access = function(conf, ctx)
        local token = ando.request.get_header(conf.header)
        if token == nil then
            return 401, { message = "Missing token" }
        end
        for _, accepted in ipairs(conf.tokens) do
            if token == accepted then
                ctx.authenticated = true
                return
            end
        end
        return 401, { message = "Invalid token" }
    end,
}
