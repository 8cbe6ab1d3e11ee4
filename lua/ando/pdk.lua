-- Ando's Plugin Development Kit: what a Lua plugin sees of the gateway, as the global `ando`
-- (also `require("ando")`). Documented in docs/lua-pdk.md.
--
-- Built once per worker by ando/lua/runtime.py with `py`, the Python bindings
-- (ando/lua/pdk.py), which act on the request being served. This file is trusted: plugin code
-- never reaches `py` (it is an upvalue here, and plugin sandboxes have no debug library).

return function(py, EXIT, core)
    local select, tostring, concat, setmetatable = select, tostring, table.concat, setmetatable
    local running, yield = coroutine.running, coroutine.yield
    local READ_BODY = core.READ_BODY

    -- The whole request body: py.get_body() gives it once it is read; before that (nil), the
    -- phase call waits for it: its coroutine yields to Python, which reads the body and
    -- resumes it with the body.
    local py_get_body = py.get_body
    local function get_body()
        local body = py_get_body()
        if body ~= nil then
            return body
        end
        if running() ~= core.phase_co then
            error("ando.request.get_body: the body is not read yet, and cannot be waited for "
                .. "inside a coroutine the plugin created: call it from the phase function", 2)
        end
        return yield(READ_BODY)
    end

    -- get_headers(): lower-case names, and a lookup by any spelling as ngx.req.get_headers()
    -- has (headers["Content-Type"], headers.content_type): on a miss, the key lower-cased with
    -- "_" as "-".
    local lower, gsub, rawget = string.lower, string.gsub, rawget
    local HEADERS_MT = {
        __index = function(t, k)
            if type(k) == "string" then
                local n = gsub(lower(k), "_", "-")
                if n ~= k then
                    return rawget(t, n)
                end
            end
        end,
    }
    local py_get_headers = py.get_headers
    local function get_headers()
        return setmetatable(py_get_headers(), HEADERS_MT)
    end

    local ando = {}

    ando.request = {
        get_method = py.get_method,
        get_uri = py.get_uri,
        get_path = py.get_path,
        get_query = py.get_query,
        get_arg = py.get_arg,
        get_header = py.get_header,
        get_headers = get_headers,
        set_header = py.set_header,
        add_header = py.add_header,
        remove_header = py.remove_header,
        set_uri = py.set_uri,
        set_arg = py.set_arg,
        get_remote_addr = py.get_remote_addr,
        get_host = py.get_host,
        get_scheme = py.get_scheme,
        get_body = get_body,
    }

    -- In header_filter (core.batching), header changes are queued in core.head_ops and handed
    -- to Python with the call's results (runtime.lua's bind_head); reading the headers first
    -- hands over what is queued. A value that would split the response is refused here, at the
    -- caller's line, as the Python side would.
    local head_ops, find, unpack_ = core.head_ops, string.find, unpack
    local py_resp_get, py_resp_set = py.resp_get_header, py.resp_set_header
    local py_resp_add, py_resp_remove = py.resp_add_header, py.resp_remove_header
    local py_resp_apply = py.resp_apply

    local function push(kind, name, value)
        local n = head_ops.n
        head_ops[n + 1], head_ops[n + 2], head_ops[n + 3] = kind, name, value
        head_ops.n = n + 3
    end

    local FNAMES = { "ando.response.set_header", "ando.response.add_header" }

    -- A value that is not a string or a number (the Python side's header_values, here so the
    -- queue holds only those): nil removes (set_header) or is an error (add_header), a boolean
    -- is its tostring, a table one header per element (as ngx.header). `level`: the caller's.
    local function queue_other(kind, name, value, level)
        local t = type(value)
        if value == nil then
            if kind == 2 then
                error(FNAMES[kind] .. ": the value must not be nil", level)
            end
            push(3, name, nil)
        elseif t == "boolean" then
            push(kind, name, tostring(value))
        elseif t == "table" then
            local n = #value
            for i = 1, n do
                local v, vt = value[i], type(value[i])
                if vt ~= "string" and vt ~= "number" and vt ~= "boolean" then
                    error(FNAMES[kind] .. ": a table value must be an array of strings or "
                        .. "numbers", level)
                elseif vt == "string" and find(v, "[\r\n%z]") then
                    error("header value with CR, LF or NUL: " .. v:sub(1, 40), level)
                end
            end
            -- all checked first: a refused table changes nothing
            if kind == 1 then
                push(3, name, nil)
            end
            for i = 1, n do
                local v = value[i]
                push(2, name, type(v) == "boolean" and tostring(v) or v)
            end
        else
            error(FNAMES[kind] .. ": the value must be a string, number, boolean or array of "
                .. "them, got a " .. t, level)
        end
    end

    -- set_header(name, value) with a string name and value, checked once by Python and kept
    -- here as the header ready to send (ando.plugins.context.PreparedHeader; false where every
    -- call must go through the checks): hello_world sets the same header on every response.
    -- Queued as kind 4. Emptied when full, so values that change per request cannot grow it.
    local py_prepare = py.resp_prepare
    local prepared, n_prepared = {}, 0

    local function prepare(name, value)
        local p = py_prepare(name, value) or false
        if n_prepared >= 1024 then
            prepared, n_prepared = {}, 0
        end
        local by_name = prepared[name]
        if by_name == nil then
            by_name = {}
            prepared[name] = by_name
        end
        by_name[value] = p
        n_prepared = n_prepared + 1
        return p
    end

    local function queue(kind, name, value)
        local t = type(value)
        if kind == 1 and t == "string" and type(name) == "string" then
            local by_name = prepared[name]
            local p = by_name and by_name[value]
            if p == nil then
                if find(value, "[\r\n%z]") then
                    error("header value with CR, LF or NUL: " .. value:sub(1, 40), 3)
                end
                p = prepare(name, value)
            end
            if p then
                local n = head_ops.n
                head_ops[n + 1], head_ops[n + 2], head_ops[n + 3] = 4, p, false
                head_ops.n = n + 3
                return
            end
        end
        if kind == 3 then
            value = nil
        elseif t == "string" then
            if find(value, "[\r\n%z]") then
                error("header value with CR, LF or NUL: " .. value:sub(1, 40), 3)
            end
        elseif t ~= "number" then
            queue_other(kind, name, value, 4)  -- not a tail call: the caller is level 4
            return
        end
        local n = head_ops.n  -- push(), inlined: hello_world's set_header goes this way
        head_ops[n + 1], head_ops[n + 2], head_ops[n + 3] = kind, name, value
        head_ops.n = n + 3
    end

    local function hand_over()
        local n = head_ops.n
        if n > 0 then
            head_ops.n = 0
            py_resp_apply(unpack_(head_ops, 1, n))
        end
    end

    -- A header change: queued in header_filter, straight to Python elsewhere.
    local function batched(kind, direct)
        return function(name, value)
            if core.batching then
                queue(kind, name, value)
            else
                direct(name, value)
            end
        end
    end

    ando.response = {
        -- Ends the request (rewrite, access, before_proxy) with this status, body (a string,
        -- or a table sent as JSON) and headers, as APISIX's core.response.exit.
        exit = function(status, body, headers)
            error(setmetatable({ status = status, body = body, headers = headers }, EXIT), 0)
        end,
        set_status = py.set_status,
        get_status = py.get_status,
        get_header = function(name)
            if core.batching then
                hand_over()
            end
            return py_resp_get(name)
        end,
        set_header = batched(1, py_resp_set),
        add_header = batched(2, py_resp_add),
        remove_header = batched(3, py_resp_remove),
        -- body_filter: the chunk being sent, whether it is the last one, and its replacement.
        get_body_chunk = py.get_body_chunk,
        is_last_chunk = py.is_last_chunk,
        set_body = py.set_body,
    }

    ando.var = py.var

    local function message(...)
        local n = select("#", ...)
        if n == 1 then
            return tostring((...))
        end
        local parts = {}
        for i = 1, n do
            parts[i] = tostring((select(i, ...)))
        end
        return concat(parts, " ")
    end

    local log_ = py.log
    ando.log = {
        debug = function(...) log_("debug", message(...)) end,
        info = function(...) log_("info", message(...)) end,
        warn = function(...) log_("warn", message(...)) end,
        error = function(...) log_("error", message(...)) end,
    }

    ando.json = {
        encode = py.json_encode,
        decode = py.json_decode,
    }

    ando.time = {
        now = py.time_now,              -- wall-clock seconds since the epoch (a float)
        monotonic = py.time_monotonic,  -- seconds on a clock that never goes back
    }

    -- ando.shared: the node-wide dict (ando/plugins/shared.py), numbers only. Arguments are
    -- checked here so a wrong one is a Lua error at the caller's line.
    local type, error = type, error

    local function check_key(fname, key)
        local t = type(key)
        if t == "number" then
            return tostring(key)
        end
        if t ~= "string" then
            error("ando.shared." .. fname .. ": the key must be a string, got a " .. t, 3)
        end
        return key
    end

    local function check_number(fname, what, value)
        if type(value) ~= "number" then
            error("ando.shared." .. fname .. ": " .. what .. " must be a number (ando.shared "
                .. "stores numbers only), got a " .. type(value), 3)
        end
        return value
    end

    local function check_ttl(fname, ttl)
        if ttl == nil then
            return 0
        end
        check_number(fname, "the ttl", ttl)
        if ttl < 0 then
            error("ando.shared." .. fname .. ": the ttl must not be negative", 3)
        end
        return ttl
    end

    local shared_get, shared_set = py.shared_get, py.shared_set
    local shared_incr, shared_delete = py.shared_incr, py.shared_delete
    ando.shared = {
        get = function(key)
            return shared_get(check_key("get", key))
        end,
        -- set(key, nil) deletes the key, as ngx.shared.DICT:set does.
        set = function(key, value, ttl)
            key = check_key("set", key)
            if value == nil then
                shared_delete(key)
                return
            end
            check_number("set", "the value", value)
            shared_set(key, value, check_ttl("set", ttl))
        end,
        incr = function(key, delta, ttl)
            key = check_key("incr", key)
            if delta == nil then
                delta = 1
            end
            check_number("incr", "the delta", delta)
            return shared_incr(key, delta, check_ttl("incr", ttl))
        end,
        delete = function(key)
            shared_delete(check_key("delete", key))
        end,
    }

    -- ando.ctx: the current request's table, set by the runtime before each call.
    ando.ctx = nil

    return ando
end
