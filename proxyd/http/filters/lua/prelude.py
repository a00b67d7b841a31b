"""Envoy's Lua handle API, the Lua side (run in every script's state before the script)."""

PRELUDE = r"""
-- Envoy's Lua handle API over a Python stream object `py` (method calls with ':' on
-- tables made here, so Python never sees Lua's implicit self).
local yield = coroutine.yield
local raw_pairs = pairs
-- LuaJIT 5.1 has no __pairs; Envoy builds it with the 5.2 extensions that honour it
function pairs(t)
  local mt = getmetatable(t)
  if mt and mt.__pairs then return mt.__pairs(t) end
  return raw_pairs(t)
end

-- Objects handed out before the script yields are dead after it (Envoy's markDead)
local function live(state, gen)
  if state.gen ~= gen then error("object used outside of proper scope", 3) end
end

local function wrap_headers(py, state)
  local t, g = {}, state.gen
  function t:get(k) live(state, g) return py.get(k) end
  function t:getNumValues(k) live(state, g) return py.num_values(k) end
  function t:getAtIndex(k, i) live(state, g) return py.at_index(k, i) end
  function t:add(k, v) live(state, g) py.add(k, v) end
  function t:replace(k, v) live(state, g) py.replace(k, v) end
  function t:remove(k) live(state, g) py.remove(k) end
  function t:setHttp1ReasonPhrase(r) end
  return setmetatable(t, {__pairs = function()
    live(state, g)
    local items, i = py.items(), 0
    return function()
      i = i + 1
      local kv = items[i]
      if kv then return kv[1], kv[2] end
    end
  end})
end

local function wrap_body(py)
  if py == nil then return nil end
  local b = {}
  function b:length() return py.length() end
  function b:getBytes(i, n) return py.get_bytes(i, n) end
  function b:setBytes(s) return py.set_bytes(s) end
  return b
end

local function wrap_metadata(py)
  local m = {}
  function m:get(k) return py.get(k) end
  return m
end

function __proxyd_handle(py)
  local h, state = {}, {gen = 0}
  local function wait()
    state.gen = state.gen + 1
    yield("body")
  end
  function h:headers() return wrap_headers(py.headers(), state) end
  function h:body(always_wrap)
    if not py.body_done() then wait() end
    return wrap_body(py.body(always_wrap))
  end
  function h:bodyChunks()
    local done = false
    return function()
      if done then return nil end
      if not py.body_done() then wait() end
      done = true
      return wrap_body(py.body(true))
    end
  end
  function h:trailers()
    if not py.body_done() then wait() end
    local t = py.trailers()
    if t == nil then return nil end
    return wrap_headers(t, state)
  end
  function h:metadata() return wrap_metadata(py.metadata()) end
  function h:respond(headers, body)
    py.respond(headers, body)
    yield("respond")
  end
  function h:logTrace(m) py.log(0, m) end
  function h:logDebug(m) py.log(1, m) end
  function h:logInfo(m) py.log(2, m) end
  function h:logWarn(m) py.log(3, m) end
  function h:logErr(m) py.log(4, m) end
  function h:logCritical(m) py.log(5, m) end
  function h:streamInfo()
    local s = {}
    function s:protocol() return py.protocol() end
    function s:dynamicMetadata()
      local d = {}
      function d:get(ns) return py.dynamic_get(ns) end
      function d:set(ns, k, v) py.dynamic_set(ns, k, v) end
      return d
    end
    return s
  end
  function h:connection()
    local c = {}
    function c:ssl() return py.ssl() end
    return c
  end
  return h
end

function __proxyd_run(fn, py)
  fn(__proxyd_handle(py))
  return "done"
end
"""
