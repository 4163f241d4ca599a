local P = KEYS[1]
local op = ARGV[1]
local cap = tonumber(ARGV[2])
local OVERHEAD = tonumber(ARGV[3])
local ITEM = tonumber(ARGV[4])
-- Most entries one call visits or removes (get_keys, flush_expired,
-- evictions for one write): the rest is done by further calls.
local BATCH = tonumber(ARGV[5])
local KT, KD, KE, KU, KW, KM = P .. 't', P .. 'd', P .. 'e', P .. 'u', P .. 'w', P .. 'm'
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local flushed_below = tonumber(redis.call('HGET', KM, 'flush') or 0)

local function list_key(k) return P .. 'l' .. k end

local function header(k)
  local h = redis.call('HGET', KT, k)
  if not h then return nil end
  local typ, flags, cost = string.match(h, '^(%a):(%d+):(%d+)$')
  if not typ then return nil end
  return { typ = typ, flags = flags, cost = tonumber(cost) }
end

local function is_expired(k)
  local e = redis.call('ZSCORE', KE, k)
  if e and tonumber(e) <= now then return true end
  local w = redis.call('ZSCORE', KW, k)
  return (not w) or tonumber(w) < flushed_below
end

local function remove(k, h)
  redis.call('HDEL', KT, k)
  redis.call('HDEL', KD, k)
  redis.call('ZREM', KE, k)
  redis.call('ZREM', KU, k)
  redis.call('ZREM', KW, k)
  if not h or h.typ == 'l' then redis.call('DEL', list_key(k)) end
  if h then redis.call('HINCRBY', KM, 'used', -h.cost) end
end

local function used() return tonumber(redis.call('HGET', KM, 'used') or 0) end
local function touch(k) redis.call('ZADD', KU, redis.call('HINCRBY', KM, 'clock', 1), k) end
local function rewrite(k) redis.call('ZADD', KW, redis.call('HINCRBY', KM, 'seq', 1), k) end

local function set_expiry(k, ttl)
  if ttl > 0 then redis.call('ZADD', KE, now + ttl, k) else redis.call('ZREM', KE, k) end
end

local function size_of(typ, data)
  if typ == 's' then return #data elseif typ == 'b' then return 1 end
  return 8
end
local function entry_cost(k, size) return #k + size + OVERHEAD end
local function item_cost(item)
  if string.sub(item, 1, 1) == 's' then return #item - 1 + ITEM end
  return 8 + ITEM
end

-- An expired entry: the earliest by time to live, else the oldest flushed.
local function oldest_expired()
  local e = redis.call('ZRANGEBYSCORE', KE, '-inf', now, 'LIMIT', 0, 1)
  if e[1] then return e[1] end
  local w = redis.call('ZRANGE', KW, 0, 0, 'WITHSCORES')
  if w[1] and tonumber(w[2]) < flushed_below then return w[1] end
  return nil
end

-- Entries this call removed to make room, and whether live ones were among
-- them (a write answers the count last: the caller charges for them).
local removed, evicted = 0, 0

-- Room for `need` more bytes: expired entries first, then (if `evict`) the
-- least recently used; `keep` never goes. nil if there is no room, else
-- true; 'again' after BATCH removals, when there is not room yet (the caller
-- answers {2, evicted}: call again).
local function room(need, keep, evict)
  local u = used()
  while u + need > cap do
    if removed >= BATCH then return 'again' end
    local victim = oldest_expired()
    if not victim then break end
    local h = header(victim)
    remove(victim, h)
    removed = removed + 1
    if h then u = u - h.cost end
  end
  if u + need <= cap then return true end
  if not evict then return nil end
  while u + need > cap do
    if removed >= BATCH then return 'again' end
    local tail = redis.call('ZRANGE', KU, 0, 1)
    local victim = tail[1]
    if victim == keep then victim = tail[2] end
    if not victim then return nil end
    local h = header(victim)
    remove(victim, h)
    removed = removed + 1
    evicted = 1
    if h then u = u - h.cost end
  end
  return true
end

if op == 'get' then
  local k = ARGV[6]
  local h = header(k)
  if not h then return {0} end
  local expired = is_expired(k)
  if expired and ARGV[7] ~= '1' then return {0} end
  touch(k)
  if h.typ == 'l' then return {1, 'value is a list'} end
  return {0, h.typ, redis.call('HGET', KD, k) or '', tonumber(h.flags), expired and 1 or 0}
end

if op == 'store' then
  local k, mode, typ, data, ttl, flags = ARGV[6], ARGV[7], ARGV[8], ARGV[9], tonumber(ARGV[10]), ARGV[11]
  local h = header(k)
  local live = h and not is_expired(k)
  if (mode == 'add' or mode == 'safe_add') and live then return {1, 'exists'} end
  if mode == 'replace' and not live then return {1, 'not found'} end
  if h and not live then remove(k, h); h = nil end
  if typ == '' then
    if h then remove(k, h) end
    return {0, 0}
  end
  local cost = entry_cost(k, size_of(typ, data))
  if cost > cap then return {1, 'no memory'} end
  local old = h and h.cost or 0
  local evict = mode == 'set' or mode == 'add' or mode == 'replace'
  local roomy = room(math.max(cost - old, 0), h and k, evict)
  if roomy == 'again' then return {2, evicted} end
  if not roomy then return {1, 'no memory', removed} end
  if h and h.typ == 'l' then redis.call('DEL', list_key(k)) end
  redis.call('HSET', KT, k, typ .. ':' .. flags .. ':' .. cost)
  redis.call('HSET', KD, k, data)
  redis.call('HINCRBY', KM, 'used', cost - old)
  set_expiry(k, ttl)
  touch(k)
  rewrite(k)
  return {0, evicted, removed}
end

if op == 'incr' then
  local k, dtyp, delta, ityp, init, ttl = ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10], tonumber(ARGV[11])
  local h = header(k)
  if h and not is_expired(k) then
    if h.typ ~= 'i' and h.typ ~= 'f' then return {1, 'not a number'} end
    local typ = 'f'
    if h.typ == 'i' and dtyp == 'i' then
      local r = redis.pcall('HINCRBY', KD, k, delta)
      if type(r) == 'table' and r.err then return {1, 'integer overflow'} end
      typ = 'i'
    else
      local sum = tonumber(redis.call('HGET', KD, k)) + tonumber(delta)
      redis.call('HSET', KD, k, string.format('%.17g', sum))
      if h.typ ~= 'f' then redis.call('HSET', KT, k, 'f:' .. h.flags .. ':' .. h.cost) end
    end
    touch(k)
    rewrite(k)
    return {0, typ, redis.call('HGET', KD, k), 0}
  end
  if h then remove(k, h) end
  if ityp == '' then return {1, 'not found'} end
  local cost = entry_cost(k, 8)
  if cost > cap then return {1, 'no memory'} end
  local roomy = room(cost, nil, true)
  if roomy == 'again' then return {2, evicted} end
  if not roomy then return {1, 'no memory', removed} end
  redis.call('HSET', KT, k, ityp .. ':0:' .. cost)
  redis.call('HSET', KD, k, init)
  redis.call('HINCRBY', KM, 'used', cost)
  set_expiry(k, ttl)
  touch(k)
  rewrite(k)
  return {0, ityp, init, evicted, removed}
end

if op == 'ttl' then
  local k = ARGV[6]
  local h = header(k)
  if not h or is_expired(k) then return {1, 'not found'} end
  local e = redis.call('ZSCORE', KE, k)
  if not e then return {0, 0} end
  return {0, tonumber(e) - now}
end

if op == 'expire' then
  local k = ARGV[6]
  local h = header(k)
  if not h or is_expired(k) then return {1, 'not found'} end
  set_expiry(k, tonumber(ARGV[7]))
  return {0}
end

if op == 'flush_all' then
  redis.call('HSET', KM, 'flush', tonumber(redis.call('HGET', KM, 'seq') or 0) + 1)
  return {0}
end

if op == 'flush_expired' then
  local max = tonumber(ARGV[6])
  if max == 0 or max > BATCH then max = BATCH end
  local n = 0
  while n < max do
    local victim = oldest_expired()
    if not victim then break end
    remove(victim, header(victim))
    n = n + 1
  end
  return {0, n}
end

-- BATCH entries of the LRU order from rank ARGV[6]: the live keys, after
-- the rank to go on from (-1: the end).
if op == 'get_keys' then
  local start = tonumber(ARGV[6])
  local batch = redis.call('ZRANGE', KU, start, start + BATCH - 1)
  local out = {0, -1}
  if #batch == BATCH then out[2] = start + BATCH end
  for _, k in ipairs(batch) do
    if not is_expired(k) then out[#out + 1] = k end
  end
  return out
end

if op == 'free_space' then
  return {0, math.max(cap - used(), 0)}
end

if op == 'push' then
  local k, front, item = ARGV[6], ARGV[7] == '1', ARGV[8]
  local h = header(k)
  local live = h and not is_expired(k)
  if live and h.typ ~= 'l' then return {1, 'value not a list'} end
  if h and not live then remove(k, h); h = nil end
  local old = h and h.cost or 0
  local total = (h and h.cost or entry_cost(k, 0)) + item_cost(item)
  if total > cap then return {1, 'no memory'} end
  local roomy = room(total - old, h and k, false)
  if roomy == 'again' then return {2, evicted} end
  if not roomy then return {1, 'no memory', removed} end
  local length = redis.call(front and 'LPUSH' or 'RPUSH', list_key(k), item)
  redis.call('HSET', KT, k, 'l:0:' .. total)
  redis.call('HINCRBY', KM, 'used', total - old)
  touch(k)
  rewrite(k)
  return {0, length, removed}
end

if op == 'pop' then
  local k, front = ARGV[6], ARGV[7] == '1'
  local h = header(k)
  if not h then return {0} end
  if is_expired(k) then remove(k, h); return {0} end
  if h.typ ~= 'l' then return {1, 'value not a list'} end
  local item = redis.call(front and 'LPOP' or 'RPOP', list_key(k))
  if not item then remove(k, h); return {0} end
  if redis.call('LLEN', list_key(k)) == 0 then
    remove(k, h)
  else
    local c = item_cost(item)
    redis.call('HSET', KT, k, 'l:0:' .. (h.cost - c))
    redis.call('HINCRBY', KM, 'used', -c)
    touch(k)
  end
  return {0, string.sub(item, 1, 1), string.sub(item, 2)}
end

if op == 'llen' then
  local k = ARGV[6]
  local h = header(k)
  if not h or is_expired(k) then return {0, 0} end
  if h.typ ~= 'l' then return {1, 'value not a list'} end
  touch(k)
  return {0, redis.call('LLEN', list_key(k))}
end

return redis.error_reply('moonwall: unknown shared dict operation')
