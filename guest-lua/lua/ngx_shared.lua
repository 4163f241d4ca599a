-- ngx.shared: the tenant's shared dicts (lua-nginx-module's ngx.shared.DICT),
-- over wit/shared-dict.wit.
--
-- `ngx.shared.NAME` opens the dict NAME (the host answers only for the dicts
-- the tenant's policy declares) and keeps the object for the rest of the
-- request. The methods give OpenResty's argument checks and return values;
-- the host enforces everything else (key and value sizes, capacity, expiry,
-- eviction), so nothing here is a security boundary.
--
-- Differences from OpenResty (docs/lua-api.md): a name the policy does not
-- grant raises an error instead of giving nil; integers stay integers.

local _, prim = ...

local type, tostring, tonumber, error, setmetatable, rawset, find, floor, mtype =
  type, tostring, tonumber, error, setmetatable, rawset, string.find, math.floor, math.type

-- Store modes, as wit/shared-dict.wit's `store-mode` numbers them.
local SET, SAFE_SET, ADD, SAFE_ADD, REPLACE = 0, 1, 2, 3, 4

local MAX_KEY = 65535
-- Longer times are capped by the host (about 34 years).
local MAX_MS = 1 << 52

local methods = {}
local dict_mt = { __index = methods }

-- dict object -> its handle; only objects made here are dicts.
local handles = setmetatable({}, { __mode = "k" })

local function check_zone(zone)
  local h = type(zone) == "table" and handles[zone]
  if not h then error('bad "zone" argument', 3) end
  return h
end

local function check_key(key)
  if key == nil then return nil, "nil key" end
  if type(key) ~= "string" then key = tostring(key) end
  local len = #key
  if len == 0 then return nil, "empty key" end
  if len > MAX_KEY then return nil, "key too long" end
  return key
end

-- Seconds (a number; nil: `default`) to whole milliseconds, as OpenResty
-- truncates them; raises `bad "<what>" argument` (at the caller of the
-- method) for anything else.
local function to_ms(seconds, what, default)
  if seconds == nil then
    if default == nil then error('bad "' .. what .. '" argument', 3) end
    return default
  end
  if type(seconds) ~= "number" then
    seconds = tonumber(seconds)
    if not seconds then error('bad "' .. what .. '" argument', 3) end
  end
  if seconds ~= seconds or seconds < 0 then error('bad "' .. what .. '" argument', 3) end
  local ms = seconds * 1000.0 -- a float: a huge integer must not wrap
  if ms >= MAX_MS then return MAX_MS end
  return floor(ms)
end

local function check_flags(flags)
  if flags == nil then return 0 end
  if mtype(flags) == "float" and flags == floor(flags) then flags = floor(flags) end
  if mtype(flags) ~= "integer" or flags < 0 or flags > 0xffffffff then
    error('bad "flags" argument', 3)
  end
  return flags
end

local function backend_failure(err)
  return find(err, "shared dict backend:", 1, true) == 1
end

---------------------------------------------------------------------------
-- reading
---------------------------------------------------------------------------

function methods.get(zone, key)
  local h = check_zone(zone)
  local k, err = check_key(key)
  if not k then return nil, err end
  local found, value, flags = prim.get(h, k, false)
  if found == nil then return nil, value end
  if not found then return nil end
  if flags ~= 0 then return value, flags end
  return value
end

function methods.get_stale(zone, key)
  local h = check_zone(zone)
  local k, err = check_key(key)
  if not k then return nil, err end
  local found, value, flags, stale = prim.get(h, k, true)
  if found == nil then return nil, value end
  if not found then return nil end
  if flags ~= 0 then return value, flags, stale end
  return value, nil, stale
end

---------------------------------------------------------------------------
-- writing
---------------------------------------------------------------------------

local function store(zone, mode, key, value, exptime, flags)
  local h = check_zone(zone)
  local ms = to_ms(exptime, "exptime", 0)
  flags = check_flags(flags)
  local k, err = check_key(key)
  if not k then return nil, err end
  local vt = type(value)
  if value ~= nil and vt ~= "string" and vt ~= "number" and vt ~= "boolean" then
    return nil, "bad value type"
  end
  local forcible
  forcible, err = prim.store(h, k, value, ms, flags, mode)
  if forcible == nil then
    if backend_failure(err) then return nil, err end
    return false, err, false
  end
  return true, nil, forcible
end

function methods.set(zone, key, value, exptime, flags)
  return store(zone, SET, key, value, exptime, flags)
end

function methods.safe_set(zone, key, value, exptime, flags)
  return store(zone, SAFE_SET, key, value, exptime, flags)
end

function methods.add(zone, key, value, exptime, flags)
  return store(zone, ADD, key, value, exptime, flags)
end

function methods.safe_add(zone, key, value, exptime, flags)
  return store(zone, SAFE_ADD, key, value, exptime, flags)
end

function methods.replace(zone, key, value, exptime, flags)
  return store(zone, REPLACE, key, value, exptime, flags)
end

function methods.delete(zone, key)
  return store(zone, SET, key, nil)
end

function methods.incr(zone, key, value, init, init_ttl)
  local h = check_zone(zone)
  local k, err = check_key(key)
  if not k then return nil, err end
  if type(value) ~= "number" then
    local typ = type(value)
    value = tonumber(value)
    if not value then error("bad value arg: number expected, got " .. typ, 2) end
  end
  if not init then
    init = nil
  elseif type(init) ~= "number" then
    local typ = type(init)
    init = tonumber(init)
    if not init then error("bad init arg: number expected, got " .. typ, 2) end
  end
  local ttl_ms = 0
  if init_ttl ~= nil then
    if type(init_ttl) ~= "number" then
      local typ = type(init_ttl)
      init_ttl = tonumber(init_ttl)
      if not init_ttl then error("bad init_ttl arg: number expected, got " .. typ, 2) end
    end
    if init_ttl ~= init_ttl or init_ttl < 0 then error('bad "init_ttl" argument', 2) end
    if init == nil then error('must provide "init" when providing "init_ttl"', 2) end
    ttl_ms = to_ms(init_ttl, "init_ttl")
  end
  local new, forcible = prim.incr(h, k, value, init, ttl_ms)
  if new == nil then return nil, forcible end
  if init == nil then return new end
  return new, nil, forcible
end

---------------------------------------------------------------------------
-- expiry and the whole dict
---------------------------------------------------------------------------

function methods.ttl(zone, key)
  local h = check_zone(zone)
  local k, err = check_key(key)
  if not k then return nil, err end
  local ms
  ms, err = prim.ttl(h, k)
  if not ms then return nil, err end
  return ms / 1000
end

function methods.expire(zone, key, exptime)
  local h = check_zone(zone)
  local ms = to_ms(exptime, "exptime")
  local k, err = check_key(key)
  if not k then return nil, err end
  local ok
  ok, err = prim.expire(h, k, ms)
  if not ok then return nil, err end
  return true
end

function methods.flush_all(zone)
  local h = check_zone(zone)
  local ok, err = prim.flush_all(h)
  if not ok then return nil, err end
end

-- A count argument: nil is `default`; negative counts as 0 (no limit).
local function check_count(n, default)
  if n == nil then return default end
  if type(n) ~= "number" then
    n = tonumber(n)
    if not n then error("bad argument #1 (number expected)", 3) end
  end
  if n ~= n or n <= 0 then return 0 end
  if n >= 0xffffffff then return 0xffffffff end
  return floor(n)
end

function methods.flush_expired(zone, max_count)
  local h = check_zone(zone)
  return prim.flush_expired(h, check_count(max_count, 0))
end

function methods.get_keys(zone, max_count)
  local h = check_zone(zone)
  return prim.get_keys(h, check_count(max_count, 1024))
end

function methods.capacity(zone)
  return prim.capacity(check_zone(zone))
end

function methods.free_space(zone)
  return prim.free_space(check_zone(zone))
end

---------------------------------------------------------------------------
-- lists
---------------------------------------------------------------------------

local function push(zone, key, value, front)
  local h = check_zone(zone)
  local k, err = check_key(key)
  if not k then return nil, err end
  local vt = type(value)
  if vt ~= "string" and vt ~= "number" then return nil, "bad value type" end
  local length
  length, err = prim.push(h, k, value, front)
  if not length then
    if err == "no memory" then return false, err end
    return nil, err
  end
  return length
end

function methods.lpush(zone, key, value) return push(zone, key, value, true) end
function methods.rpush(zone, key, value) return push(zone, key, value, false) end

local function pop(zone, key, front)
  local h = check_zone(zone)
  local k, err = check_key(key)
  if not k then return nil, err end
  local found, value = prim.pop(h, k, front)
  if found == nil then return nil, value end
  if not found then return nil end
  return value
end

function methods.lpop(zone, key) return pop(zone, key, true) end
function methods.rpop(zone, key) return pop(zone, key, false) end

function methods.llen(zone, key)
  local h = check_zone(zone)
  local k, err = check_key(key)
  if not k then return nil, err end
  return prim.llen(h, k)
end

---------------------------------------------------------------------------
-- ngx.shared
---------------------------------------------------------------------------

return setmetatable({}, {
  __index = function(shared, name)
    if type(name) ~= "string" then
      error("ngx.shared: a dict name is a string, not a " .. type(name), 2)
    end
    local h, err = prim.open(name)
    if not h then error(err, 2) end
    local dict = setmetatable({}, dict_mt)
    handles[dict] = h
    rawset(shared, name, dict)
    return dict
  end,
  __newindex = function()
    error("ngx.shared is read-only", 2)
  end,
})
