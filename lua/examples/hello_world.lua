-- hello_world: adds the response headers its configuration lists, on every response of the
-- route (the upstream's, or one the gateway makes). Enable with
--   ando: {lua: {plugins: [examples.hello_world]}}
-- and use as
--   plugins: {hello-world: {headers: {X-Hello: world}}}

return {
    name = "hello-world",
    priority = 1000,
    version = "0.1",
    schema = {
        type = "object",
        properties = {
            headers = {
                description = "Response headers to add: name -> value.",
                type = "object",
                additionalProperties = { type = "string" },
                default = { ["X-Hello"] = "world" },
            },
        },
        additionalProperties = false,
    },

    header_filter = function(conf, ctx)
        for name, value in pairs(conf.headers) do
            ando.response.set_header(name, value)
        end
    end,
}
