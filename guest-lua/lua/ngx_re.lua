-- ngx.re: OpenResty's regular expressions (match, find, gmatch, sub, gsub,
-- and lua-resty-core's split and opt), over wit/regex.wit.
--
-- The host compiles patterns (PCRE syntax, translated for a linear-time
-- engine) and searches; it returns byte offsets, and the C primitives
-- (glue/regex.c) build captures tables and gsub's result from them, in the
-- guest's own memory. Nothing here is a security boundary: the host bounds
-- patterns, compiled sizes and what one call returns. This file gives
-- OpenResty's argument handling, `ctx.pos` and return values.
--
-- Every tenant has ngx.re (it is computation). Differences from OpenResty:
-- docs/lua-api.md.

local _, prim = ...

local type, tostring, error, floor, mtype, min, sub, concat =
  type, tostring, error, math.floor, math.type, math.min, string.sub, table.concat
local p_options, p_compile, p_match, p_find, p_scan, p_count, p_span, p_captures, p_gsub =
  prim.options, prim.compile, prim.match, prim.find, prim.scan, prim.count, prim.span,
  prim.captures, prim.gsub
local NO_UTF8_CHECK = prim.NO_UTF8_CHECK

local re = {}

-- Per request (every request starts from a fresh state): option strings
-- already parsed, and what each compiled pattern captures. Both are bounded:
-- past the bound, the table starts over.
local MAX_KEPT = 512
local flag_cache, flags_kept = {}, 0
local infos, infos_kept = {}, 0

-- Errors in arguments are raised at the script's call: `level` is that
-- call's level as error() counts it from the function that raises.
local function argument_error(n, fname, expected, value, level)
  error("bad argument #" .. n .. " to '" .. fname .. "' (" .. expected .. " expected, got "
    .. type(value) .. ")", level)
end

-- A subject or pattern argument: strings, and numbers as strings.
local function check_string(value, n, fname, level)
  local t = type(value)
  if t == "string" then return value end
  if t == "number" then return tostring(value) end
  argument_error(n, fname, "string", value, level + 1)
end

-- The options string as the host's flags; a bad letter raises an error, as
-- in OpenResty.
local function options(opts, n, fname, level)
  if opts == nil then return 0 end
  local flags = flag_cache[opts]
  if flags then return flags end
  if type(opts) ~= "string" then argument_error(n, fname, "string", opts, level + 1) end
  local err
  flags, err = p_options(opts)
  if not flags then error(err, level) end
  if flags_kept >= MAX_KEPT then flag_cache, flags_kept = {}, 0 end
  flag_cache[opts] = flags
  flags_kept = flags_kept + 1
  return flags
end

-- What `regex` captures under `flags`: {groups = n, names = flat list or
-- false}; nil and the compile error if it does not compile.
local function info_of(regex, flags)
  local by_pattern = infos[flags]
  local info = by_pattern and by_pattern[regex]
  if info then return info end
  local groups, names = p_compile(regex, flags)
  if not groups then return nil, names end
  if infos_kept >= MAX_KEPT then infos, infos_kept, by_pattern = {}, 0, nil end
  if not by_pattern then
    by_pattern = {}
    infos[flags] = by_pattern
  end
  info = { groups = groups, names = names }
  by_pattern[regex] = info
  infos_kept = infos_kept + 1
  return info
end

-- ctx.pos (1-based) as a 0-based start offset.
local function start_of(ctx, n, fname, level)
  if ctx == nil then return 0 end
  if type(ctx) ~= "table" then argument_error(n, fname, "table", ctx, level + 1) end
  local pos = ctx.pos
  if pos == nil then return 0 end
  if type(pos) ~= "number" then
    error("bad argument #" .. n .. " to '" .. fname
      .. "' (bad pos field type in the ctx table argument: " .. type(pos) .. ")", level)
  end
  if mtype(pos) ~= "integer" then
    if pos ~= pos then return 0 end
    pos = floor(pos)
    if pos >= 2^53 then return 1 << 53 end
    pos = math.tointeger(pos) or 0
  end
  if pos <= 0 then return 0 end
  return pos - 1
end

function re.match(subject, regex, opts, ctx, res)
  subject = check_string(subject, 1, "match", 3)
  regex = check_string(regex, 2, "match", 3)
  local flags = options(opts, 3, "match", 3)
  local start = start_of(ctx, 4, "match", 3)
  if res ~= nil and type(res) ~= "table" then argument_error(5, "match", "table", res, 3) end
  local info, err = info_of(regex, flags)
  if not info then return nil, err end
  local m, last = p_match(regex, flags, subject, start, info.groups, info.names, res)
  if not m then
    if m == nil then return nil, last end
    return nil
  end
  if ctx then ctx.pos = last + 1 end
  return m
end

function re.find(subject, regex, opts, ctx, nth)
  subject = check_string(subject, 1, "find", 3)
  regex = check_string(regex, 2, "find", 3)
  local flags = options(opts, 3, "find", 3)
  local start = start_of(ctx, 4, "find", 3)
  if nth == nil then
    nth = 0
  elseif type(nth) ~= "number" then
    argument_error(5, "find", "number", nth, 3)
  else
    nth = math.tointeger(floor(nth)) or 0
    if nth < 0 then nth = 0 end
  end
  local info, err = info_of(regex, flags)
  if not info then return nil, nil, err end
  if nth > info.groups then return nil, nil, "nth out of bound" end
  local last, from, to = p_find(regex, flags, subject, start, nth)
  if not last then
    if last == nil then return nil, nil, from end
    return nil
  end
  if ctx then ctx.pos = last + 1 end
  if not from then return nil end
  return from, to
end

-- Matches are fetched from the host in batches that grow (a loop that stops
-- early costs little, a long one few host calls).
local FIRST_BATCH, MAX_BATCH = 4, 4096

function re.gmatch(subject, regex, opts)
  subject = check_string(subject, 1, "gmatch", 3)
  regex = check_string(regex, 2, "gmatch", 3)
  local flags = options(opts, 3, "gmatch", 3)
  local info, err = info_of(regex, flags)
  if not info then return nil, err end
  local groups, names = info.groups, info.names
  local scan_flags = flags
  local batch, k, n = nil, 0, 0
  local pos = 0        -- where the next batch starts; false: no more
  local size = FIRST_BATCH
  return function()
    if k >= n then
      if not pos then return nil end
      local b, next_pos = p_scan(regex, scan_flags, subject, pos, groups + 1, size)
      if not b then
        pos = false
        return nil, next_pos
      end
      scan_flags = flags | NO_UTF8_CHECK -- the host checked the subject once
      batch, k, n = b, 0, p_count(b)
      pos = next_pos
      size = min(size * 4, MAX_BATCH)
      if n == 0 then
        pos = false
        return nil
      end
    end
    k = k + 1
    return p_captures(batch, k, subject, groups, names, flags)
  end
end

-- sub and gsub with a function: the function gets each match's captures
-- table and returns its replacement.
local function substitute_with(fname, subject, regex, replace, flags, info, global)
  local parts, np, copied, count = {}, 0, 0, 0
  local groups, names = info.groups, info.names
  local scan_flags = flags
  local pos = 0
  local size = global and FIRST_BATCH or 1
  while pos do
    local b, next_pos = p_scan(regex, scan_flags, subject, pos, groups + 1, size)
    if not b then return nil, nil, next_pos end
    scan_flags = flags | NO_UTF8_CHECK
    for k = 1, p_count(b) do
      local from, to = p_span(b, k, 0)
      local replacement = replace(p_captures(b, k, subject, groups, names, flags))
      local rtype = type(replacement)
      if rtype == "number" then
        replacement = tostring(replacement)
      elseif rtype ~= "string" then
        error("bad argument #3 to '" .. fname .. "' (string or number expected to be returned"
          .. " by the replace function, got " .. rtype .. ")", 4)
      end
      parts[np + 1] = sub(subject, copied + 1, from)
      parts[np + 2] = replacement
      np = np + 2
      copied = to
      count = count + 1
    end
    if not global then break end
    pos = next_pos
    size = min(size * 4, MAX_BATCH)
  end
  if count == 0 then return subject, 0 end
  parts[np + 1] = sub(subject, copied + 1)
  return concat(parts), count
end

local function substitute(fname, subject, regex, replace, opts, global)
  subject = check_string(subject, 1, fname, 4)
  regex = check_string(regex, 2, fname, 4)
  local rtype = type(replace)
  if rtype ~= "function" and rtype ~= "string" and rtype ~= "number" then
    error("bad argument #3 to '" .. fname .. "' (string, number, or function expected, got "
      .. rtype .. ")", 3)
  end
  local flags = options(opts, 4, fname, 4)
  local info, err = info_of(regex, flags)
  if not info then return nil, nil, err end
  if rtype == "function" then
    local result, count, failure = substitute_with(fname, subject, regex, replace, flags, info,
      global)
    return result, count, failure
  end
  local result, count = p_gsub(regex, flags, subject, tostring(replace), info.groups,
    info.names, global)
  if not result then return nil, nil, count end
  return result, count
end

-- (Not tail calls: errors count the levels up to the script.)
function re.sub(subject, regex, replace, opts)
  local result, count, err = substitute("sub", subject, regex, replace, opts, false)
  if result == nil then return nil, nil, err end
  return result, count
end

function re.gsub(subject, regex, replace, opts)
  local result, count, err = substitute("gsub", subject, regex, replace, opts, true)
  if result == nil then return nil, nil, err end
  return result, count
end

-- lua-resty-core's ngx.re.split: the pieces between matches; the first
-- group's capture, when it took part, goes in between; `max` > 0 makes at
-- most `max` pieces (the last one the rest of the subject); without `max`,
-- empty pieces at the end are dropped.
function re.split(subject, regex, opts, ctx, max, res)
  subject = check_string(subject, 1, "split", 3)
  regex = check_string(regex, 2, "split", 3)
  local flags = options(opts, 3, "split", 3)
  local start = start_of(ctx, 4, "split", 3) + 1
  if max == nil then
    max = 0
  elseif type(max) ~= "number" then
    argument_error(5, "split", "number", max, 3)
  end
  if res == nil then
    res = {}
  elseif type(res) ~= "table" then
    error("res is not a table", 2)
  end
  local len = #subject
  if start > len then
    res[1] = nil
    return res
  end
  local info, err = info_of(regex, flags)
  if not info then return nil, err end
  local want = info.groups > 0 and 2 or 1

  local piece_start = start -- 1-based start of the current piece
  local n = 0                -- entries in res
  local pieces = 1
  local last_empty           -- where the last empty match was (1-based)
  local scan_flags = flags
  local pos = start - 1
  local size = FIRST_BATCH
  local stop = false
  while pos and not stop do
    local b, next_pos = p_scan(regex, scan_flags, subject, pos, want, size)
    if not b then return nil, next_pos end
    scan_flags = flags | NO_UTF8_CHECK
    for k = 1, p_count(b) do
      if max > 0 and pieces >= max then
        stop = true
        break
      end
      local from, to = p_span(b, k, 0)
      from, to = from + 1, to + 1
      if last_empty then piece_start = last_empty end
      if from == to then last_empty = from end
      if from > piece_start or not last_empty then
        pieces = pieces + 1
        n = n + 1
        res[n] = sub(subject, piece_start, from - 1)
        local cfrom, cto = p_span(b, k, 1)
        if cfrom then
          n = n + 1
          res[n] = sub(subject, cfrom + 1, cto)
        end
        piece_start = to
        if piece_start > len then
          stop = true
          break
        end
      end
    end
    pos = next_pos
    size = min(size * 4, MAX_BATCH)
  end
  if max <= 0 and piece_start > len then
    while n > 0 and res[n] == "" do
      res[n] = nil
      n = n - 1
    end
  else
    n = n + 1
    res[n] = sub(subject, piece_start)
  end
  res[n + 1] = nil
  return res
end

-- lua-resty-core's ngx.re.opt: the engine has no JIT, hence no JIT stack.
function re.opt(option, value)
  if option == "jit_stack_size" then
    if type(value) ~= "number" then error("bad jit_stack_size value", 2) end
    return
  end
  error("unrecognized option name", 2)
end

return re
