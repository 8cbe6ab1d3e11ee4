-- The trusted core of Ando's Lua runtime: sandboxes, the module loader and the call trampoline.
--
-- Loaded once per worker process by ando/lua/runtime.py, in the full global environment (it
-- needs `debug.sethook`, `io.open` and `jit`). Plugin code never sees this module: it runs in a
-- sandbox environment built here, with the PDK (`ando`) as a global.
--
-- The instruction budget is a count hook that fires every BUDGET_STEP instructions and counts
-- only while plugin code runs (`arm` before a call, `disarm` after). It is set once, for good:
-- setting and clearing it around every call rebuilt LuaJIT's dispatch table twice per call
-- (0.18 us of a 0.83 us call). LuaJIT does not run hooks inside compiled traces, so every chunk
-- of plugin code is loaded with `jit.off(chunk, true)`: it runs in LuaJIT's interpreter, where
-- the hook always fires.

local M = {}

local sethook = debug.sethook
local traceback = debug.traceback
local raw_pcall, raw_xpcall = pcall, xpcall
local raw_resume = coroutine.resume
local getmetatable, setmetatable, type, tostring, error = getmetatable, setmetatable, type, tostring, error
local unpack, select, pairs = unpack, select, pairs
local jit_off = jit.off
local open = io.open
local searchpath = package.searchpath

local BUDGET = "instruction budget exceeded"
local EXIT = {}             -- metatable marking ando.response.exit()'s sentinel error
M.EXIT = EXIT

local BUDGET_STEP = 10000   -- instructions between two firings of the hook
local exhausted = false     -- the call in progress spent its budget
local active = false        -- plugin code is running: the hook counts
local ticks, limit = 0, 0

local function budget_hook()
    if not active then
        return
    end
    if not exhausted then
        ticks = ticks + 1
        if ticks < limit then
            return
        end
        -- Spent. Fire again soon from now on: plugin code that caught the error (pcall,
        -- coroutine.resume) cannot run on.
        exhausted = true
        sethook(budget_hook, "", 1000)
    end
    error(BUDGET, 0)
end
sethook(budget_hook, "", BUDGET_STEP)

-- Before a call into plugin code: a fresh budget of `budget` instructions (to a BUDGET_STEP).
local function arm(budget)
    if exhausted then
        exhausted = false
        sethook(budget_hook, "", BUDGET_STEP)
    end
    ticks, limit, active = 0, budget / BUDGET_STEP, true
end

local function disarm()
    active = false
end

-- pcall/xpcall/coroutine.resume as plugin code sees them: they cannot swallow the budget
-- error or ando.response.exit().
local function fatal_check(ok, err, ...)
    if not ok then
        if exhausted then
            error(BUDGET, 0)
        end
        if getmetatable(err) == EXIT then
            error(err, 0)
        end
    end
    return ok, err, ...
end

local function guarded_pcall(f, ...)
    return fatal_check(raw_pcall(f, ...))
end

local function guarded_xpcall(f, handler, ...)
    local function h(e)
        if exhausted or getmetatable(e) == EXIT then
            return e
        end
        return handler(e)
    end
    return fatal_check(raw_xpcall(f, h, ...))
end

local function guarded_resume(co, ...)
    return fatal_check(raw_resume(co, ...))
end

local function copy(t, without)
    local out = {}
    for k, v in pairs(t) do
        if not (without and without[k]) then
            out[k] = v
        end
    end
    return out
end

-- Method calls on strings reach string's functions without dump, as the sandbox's `string`
-- has them: ("").dump is nil as string.dump is. Strings' shared metatable cannot be read or
-- replaced from plugin code.
getmetatable("").__index = copy(string, { dump = true })
getmetatable("").__metatable = false

local function text_loader(env)
    -- load()/loadstring() for plugin code: source text only (mode "t"), into the sandbox,
    -- interpreted (so the budget holds).
    local function load_text(chunk, name, mode, chunk_env)
        if mode ~= nil and mode ~= "t" then
            return nil, "only text chunks can be loaded (mode \"t\")"
        end
        local fn, err = load(chunk, name, "t", chunk_env or env)
        if fn then
            jit_off(fn, true)
        end
        return fn, err
    end
    local function loadstring_text(s, name)
        return load_text(s, name, "t")
    end
    return load_text, loadstring_text
end

-- A sandbox: the environment plugin modules run in, with their own module cache.
-- `path` is the package.path-style search string; `unsafe` gives the full standard library.
function M.new_sandbox(path, unsafe, pdk)
    local env
    if unsafe then
        env = setmetatable({}, { __index = _G })
    else
        env = {
            assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs,
            select = select, tonumber = tonumber, tostring = tostring, type = type,
            unpack = unpack, rawequal = rawequal, rawget = rawget, rawset = rawset,
            setmetatable = setmetatable, getmetatable = getmetatable, _VERSION = _VERSION,
            string = copy(string, { dump = true }),
            table = copy(table),
            math = copy(math),
            bit = copy(bit),
            os = { time = os.time, clock = os.clock, date = os.date, difftime = os.difftime },
            coroutine = {
                create = coroutine.create, status = coroutine.status, running = coroutine.running,
                yield = coroutine.yield, wrap = coroutine.wrap, resume = guarded_resume,
            },
        }
    end
    env.pcall, env.xpcall = guarded_pcall, guarded_xpcall
    env.load, env.loadstring = text_loader(env)
    env.print = function(...)
        local parts = {}
        for i = 1, select("#", ...) do
            parts[i] = tostring((select(i, ...)))
        end
        pdk.log.info(table.concat(parts, "\t"))
    end
    env.ando = pdk
    env._G = env

    local loaded = { ando = pdk, ["ando.pdk"] = pdk }
    local function require_(name)
        local found = loaded[name]
        if found ~= nil then
            return found
        end
        local file, err = searchpath(name, path)
        if not file then
            error("module '" .. tostring(name) .. "' not found:" .. err, 2)
        end
        local f = open(file, "rb")
        if not f then
            error("cannot read " .. file, 2)
        end
        local src = f:read("*a")
        f:close()
        local chunk, lerr = load(src, "@" .. file, "t", env)
        if not chunk then
            error(lerr, 0)
        end
        jit_off(chunk, true)
        local mod = chunk(name)
        if mod == nil then
            mod = true
        end
        loaded[name] = mod
        return mod
    end
    env.require = require_
    return { env = env, require = require_, path = path }
end

-- Where a module would be loaded from (nil and the list of places tried when nowhere).
function M.find(sandbox, name)
    return searchpath(name, sandbox.path)
end

local function handler(e)
    if getmetatable(e) == EXIT then
        return e
    end
    if exhausted then
        e = BUDGET
    end
    return traceback(tostring(e), 2)
end

-- Load a plugin module in `sandbox`, under the budget: the module's value, or an error string
-- ("file:line: message").
function M.load_module(sandbox, name, budget)
    arm(budget)
    local ok, mod = raw_xpcall(sandbox.require, function(e)
        if exhausted then
            return BUDGET
        end
        return tostring(e)
    end, name)
    disarm()
    if ok then
        return true, mod
    end
    return false, mod
end

-- Compile a serverless function's source (text) in `sandbox` and run it, under the budget: it
-- must return the function to call. Returns 0 and the function; 1 and the syntax error; 2 and
-- the error raised while running it; 3 and the type of what it returned instead of a function.
function M.compile_function(sandbox, src, chunkname, budget)
    local chunk, err = load(src, chunkname, "t", sandbox.env)
    if not chunk then
        return 1, err
    end
    jit_off(chunk, true)
    arm(budget)
    local ok, fn = raw_xpcall(chunk, function(e)
        if exhausted then
            return BUDGET
        end
        if getmetatable(e) == EXIT then
            return "ando.response.exit() outside a phase function"
        end
        return tostring(e)
    end)
    disarm()
    if not ok then
        return 2, fn
    end
    if type(fn) ~= "function" then
        return 3, type(fn)
    end
    return 0, fn
end

-- Every call into plugin code runs in a coroutine of its own, so that a PDK function that must
-- wait for the gateway (ando.request.get_body before the body is read) can yield READ_BODY to
-- Python, which resumes the coroutine with the answer. `M.phase_co` is the coroutine running
-- now: pdk.lua yields only from that one, never through a coroutine plugin code created.
local READ_BODY = {}
M.READ_BODY = READ_BODY
local co_create = coroutine.create

-- Coroutines are reused: a runner calls one phase function after another, yielding DONE and
-- the outcome of each; only a runner that waits for the body is out of the pool meanwhile.
local DONE = {}
local yield = coroutine.yield

local function runner(fn, conf, ctx)
    while true do
        fn, conf, ctx = yield(DONE, raw_xpcall(fn, handler, conf, ctx))
    end
end

local pool, pooled = {}, 0

local ERRMEM = "not enough memory"  -- LuaJIT's message for an allocation past the state's limit

-- A full collection, after a call failed for memory: LuaJIT collects only as it allocates, so
-- the failed call's garbage would make every later allocation fail too. Also ando/lua/runtime.py's
-- relieve_memory, for allocations outside plugin calls.
local function collect()
    collectgarbage("collect")
end
M.collect = collect

-- The result of a phase call that finished: 0 when it went on (or 0 and what it returned, when
-- that is not nil and not a number); 1, status, body, headers when it answered; 2 and the error
-- with the Lua traceback when it failed.
local function outcome(ok, r1, r2, r3)
    if ok then
        if r1 == nil then
            return 0
        end
        if type(r1) == "number" then
            return 1, r1, r2, r3
        end
        return 0, r1
    end
    if getmetatable(r1) == EXIT then
        return 1, r1.status, r1.body, r1.headers
    end
    if r1 == ERRMEM then
        collect()
        return 2, ERRMEM .. " (past ando.lua.max_memory)"
    end
    return 2, r1
end

-- Run `co` (with the resume values) under a fresh budget: `outcome`'s results, or 3 and the
-- coroutine when it waits for the request body.
local function step(co, budget, ...)
    M.phase_co = co
    arm(budget)
    local rok, tag, a, b, c, d = raw_resume(co, ...)
    disarm()
    M.phase_co = nil
    if not rok then
        if tag == ERRMEM then
            collect()  -- first: the traceback allocates
            tag = ERRMEM .. " (past ando.lua.max_memory)"
        end
        return 2, traceback(co, tostring(tag))
    end
    if tag == DONE then
        if pooled < 16 then
            pooled = pooled + 1
            pool[pooled] = co
        end
        return outcome(a, b, c, d)
    end
    if tag == READ_BODY then
        return 3, co
    end
    -- the phase function itself yielded: this runner is left to the garbage collector
    return 2, "a phase function cannot yield (coroutine.yield outside a coroutine of its own)"
end

-- Call a phase function of plugin code: `step`'s results.
local function call(pdk, fn, conf, ctx, budget)
    pdk.ctx = ctx
    local co
    if pooled > 0 then
        co = pool[pooled]
        pool[pooled] = nil
        pooled = pooled - 1
    else
        co = co_create(runner)
    end
    return step(co, budget, fn, conf, ctx)
end
M.call = call

-- Go on with a phase call that returned 3 (waiting for the body), handing it `value`.
function M.resume(pdk, co, ctx, value, budget)
    pdk.ctx = ctx
    return step(co, budget, value)
end

-- A phase function bound to its configuration: Python calls it with the request's ctx only.
function M.bind(pdk, fn, conf, budget)
    return function(ctx)
        return call(pdk, fn, conf, ctx, budget)
    end
end

-- The same for the phases that can never wait (header_filter, body_filter, log): called
-- directly, without a coroutine, which saves a resume and a yield per call. `M.phase_co` is
-- false meanwhile, so ando.request.get_body() refuses to wait rather than yield from the main
-- thread.
function M.bind_direct(pdk, fn, conf, budget)
    return function(ctx)
        pdk.ctx = ctx
        M.phase_co = false
        arm(budget)
        local ok, r1, r2, r3 = raw_xpcall(fn, handler, conf, ctx)
        disarm()
        M.phase_co = nil
        return outcome(ok, r1, r2, r3)
    end
end

-- header_filter's changes to the response headers: pdk.lua queues them here (kind, name, value,
-- ...; kind 1 set, 2 add, 3 remove, 4 set a prepared header: the header, false) while `M.batching` is on, and they leave Lua with the call's
-- results. A Lua -> Python call costs about as much as the whole header change on the Python
-- side; hello_world's one set_header is one crossing fewer this way. A PDK read of the response
-- headers hands the queue over first (pdk.lua), so the plugin always reads what it wrote.
local head_ops = { n = 0 }
M.head_ops = head_ops
M.batching = false

-- header_filter: as bind_direct, with the header changes queued. Returns 0 followed by the
-- queued changes when the call went on; `outcome`'s results when it failed.
function M.bind_head(pdk, fn, conf, budget)
    return function(ctx)
        pdk.ctx = ctx
        M.phase_co = false
        M.batching = true
        head_ops.n = 0
        arm(budget)
        local ok, r1, r2, r3 = raw_xpcall(fn, handler, conf, ctx)
        disarm()
        M.phase_co = nil
        M.batching = false
        local n = head_ops.n
        head_ops.n = 0
        if not ok and getmetatable(r1) ~= EXIT then  -- exit() means nothing here: changes stand
            return outcome(ok, r1, r2, r3)
        end
        if n == 0 then
            return 0
        elseif n == 3 and head_ops[1] == 4 then  -- one prepared set: hello_world's
            return 0, head_ops[2]
        end
        return 0, unpack(head_ops, 1, n)
    end
end

-- The table a request's Lua plugins share as `ctx` (and `ando.ctx`): `ctx.var.NAME` reads
-- APISIX variables as in APISIX plugins (of the request being served, through the PDK).
local CTX_MT
function M.set_var(var)
    local VAR = setmetatable({}, { __index = function(_, k) return var(k) end })
    CTX_MT = { __index = { var = VAR } }
end

-- n fresh ctx tables at once (ando/lua/runtime.py hands them out one request each)
function M.new_ctxs(n)
    local made = {}
    for i = 1, n do
        made[i] = setmetatable({}, CTX_MT)
    end
    return unpack(made, 1, n)
end

function M.is_function(v)
    return type(v) == "function"
end

return M
