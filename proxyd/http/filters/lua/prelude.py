"""Envoy's Lua handle API, the Lua side (run in every script's state before the script).

Handles are tables with shared metatables (no closures per request); the Python side is
one callable per stream side, `py(op, kind, a, b)`."""

PRELUDE = r"""
local yield, setmetatable, getmetatable, error = coroutine.yield, setmetatable, getmetatable, error
local raw_pairs = pairs
-- LuaJIT 5.1 has no __pairs; Envoy builds it with the 5.2 extensions that honour it
function pairs(t)
  local mt = getmetatable(t)
  if mt and mt.__pairs then return mt.__pairs(t) end
  return raw_pairs(t)
end

-- Objects handed out before the script yields are dead after it (Envoy's markDead).
-- `py` is the stream side's one Python callable: py(op, kind, a, b) (one crossing per
-- call; Python objects themselves never cross, which costs ~10 us each in lupa).
local function live(o)
  if o.h.gen ~= o.g then error("object used outside of proper scope", 3) end
  return o.h.py
end

local Headers = {}
Headers.__index = Headers
Headers.__pairs = function(o)
  local py, kind = live(o), o.kind
  local n, i = py("count", kind), 0
  return function()
    i = i + 1
    if i <= n then return py("key", kind, i), py("value", kind, i) end
  end
end
function Headers:get(k) return live(self)("get", self.kind, k) end
function Headers:getNumValues(k) return live(self)("num_values", self.kind, k) end
function Headers:getAtIndex(k, i) return live(self)("at_index", self.kind, k, i) end
function Headers:add(k, v) live(self)("add", self.kind, k, v) end
function Headers:replace(k, v) live(self)("replace", self.kind, k, v) end
function Headers:remove(k) live(self)("remove", self.kind, k) end
function Headers:setHttp1ReasonPhrase(r) end

local Body = {}
Body.__index = Body
function Body:length() return live(self)("length") end
function Body:getBytes(i, n) return live(self)("get_bytes", nil, i, n) end
function Body:setBytes(s) return live(self)("set_bytes", nil, s) end

local Metadata = {}
Metadata.__index = Metadata
function Metadata:get(k) return nil end

local Dynamic = {}
Dynamic.__index = Dynamic
function Dynamic:get(ns) return self.h.py("dynamic_get", nil, ns) end
function Dynamic:set(ns, k, v) self.h.py("dynamic_set", nil, ns, k, v) end

local StreamInfo = {}
StreamInfo.__index = StreamInfo
function StreamInfo:protocol() return self.h.py("protocol") end
function StreamInfo:dynamicMetadata() return setmetatable({h = self.h}, Dynamic) end

local Connection = {}
Connection.__index = Connection
function Connection:ssl() return nil end

local Handle = {}
Handle.__index = Handle
local function wait(h)
  h.gen = h.gen + 1
  yield("body")
end
function Handle:headers() return setmetatable({h = self, g = self.gen, kind = "h"}, Headers) end
function Handle:body(always_wrap)
  if not self.py("body_done") then wait(self) end
  if not self.py("has_body", nil, always_wrap) then return nil end
  return setmetatable({h = self, g = self.gen}, Body)
end
function Handle:bodyChunks()
  local done, h = false, self
  return function()
    if done then return nil end
    if not h.py("body_done") then wait(h) end
    done = true
    return setmetatable({h = h, g = h.gen}, Body)
  end
end
function Handle:trailers()
  if not self.py("body_done") then wait(self) end
  if not self.py("has_trailers") then return nil end
  return setmetatable({h = self, g = self.gen, kind = "t"}, Headers)
end
function Handle:metadata() return setmetatable({}, Metadata) end
function Handle:respond(headers, body)
  local flat = {}
  for k, v in raw_pairs(headers or {}) do flat[#flat + 1] = k; flat[#flat + 1] = v end
  self.py("respond", nil, flat, body)
  yield("respond")
end
function Handle:logTrace(m) self.py("log", nil, 0, m) end
function Handle:logDebug(m) self.py("log", nil, 1, m) end
function Handle:logInfo(m) self.py("log", nil, 2, m) end
function Handle:logWarn(m) self.py("log", nil, 3, m) end
function Handle:logErr(m) self.py("log", nil, 4, m) end
function Handle:logCritical(m) self.py("log", nil, 5, m) end
function Handle:streamInfo() return setmetatable({h = self}, StreamInfo) end
function Handle:connection() return setmetatable({}, Connection) end

function __proxyd_run(fn, py)
  fn(setmetatable({py = py, gen = 0}, Handle))
  return "done"
end
"""
