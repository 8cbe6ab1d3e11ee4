-- Ando's Plugin Development Kit: what a Lua plugin sees of the gateway, as the global `ando`
-- (also `require("ando")`). Documented in docs/lua-pdk.md.
--
-- Built once per worker by ando/lua/runtime.py with `py`, the Python bindings
-- (ando/lua/pdk.py), which act on the request being served. This file is trusted: plugin code
-- never reaches `py` (it is an upvalue here, and plugin sandboxes have no debug library).

return function(py, EXIT)
    local select, tostring, concat, setmetatable = select, tostring, table.concat, setmetatable

    local ando = {}

    ando.request = {
        get_method = py.get_method,
        get_uri = py.get_uri,
        get_path = py.get_path,
        get_query = py.get_query,
        get_arg = py.get_arg,
        get_header = py.get_header,
        get_headers = py.get_headers,
        set_header = py.set_header,
        add_header = py.add_header,
        remove_header = py.remove_header,
        set_uri = py.set_uri,
        set_arg = py.set_arg,
        get_remote_addr = py.get_remote_addr,
        get_host = py.get_host,
        get_scheme = py.get_scheme,
    }

    ando.response = {
        -- Ends the request (rewrite, access, before_proxy) with this status, body (a string,
        -- or a table sent as JSON) and headers, as APISIX's core.response.exit.
        exit = function(status, body, headers)
            error(setmetatable({ status = status, body = body, headers = headers }, EXIT), 0)
        end,
        set_status = py.set_status,
        get_status = py.get_status,
        get_header = py.resp_get_header,
        set_header = py.resp_set_header,
        add_header = py.resp_add_header,
        remove_header = py.resp_remove_header,
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

    -- ando.ctx: the current request's table, set by the runtime before each call.
    ando.ctx = nil

    return ando
end
