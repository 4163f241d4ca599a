-- ngx_util: pure Lua 5.4 versions of the string, query-argument and time
-- helpers of OpenResty's lua-nginx-module / lua-resty-core:
--
--   escape_uri, unescape_uri, encode_args, decode_args, quote_sql_str,
--   http_time, cookie_time, parse_http_time, utctime, localtime, today
--
-- The behaviour follows OpenResty (lua-nginx-module's C code, as used by
-- lua-resty-core) rather than plain nginx where the two differ; the places
-- where a choice was needed are marked "NOTE" below.
--
-- The chunk defines no globals; it returns a table of functions.

local type, tostring, tonumber, error, pairs, select =
      type, tostring, tonumber, error, pairs, select
local byte, char, format, gsub, find, sub =
      string.byte, string.char, string.format, string.gsub, string.find,
      string.sub
local concat, sort = table.concat, table.sort
local mtype, floor, tointeger = math.type, math.floor, math.tointeger
local os_time = os and os.time

local M = {}

---------------------------------------------------------------------------
-- helpers
---------------------------------------------------------------------------

-- NOTE: OpenResty runs on LuaJIT, where every number is a double and
-- tostring(3.0) is "3".  Lua 5.4 would give "3.0" for a float with an
-- integral value, so floats are formatted the LuaJIT way ("%.14g");
-- integers keep all their digits.
local function num2str(n)
  if mtype(n) == "float" then
    return format("%.14g", n)
  end
  return tostring(n)
end

-- luaL_checklstring-like: a string, or a number converted to one.  Called
-- directly from an API function, it raises at the API caller's level.
local function str_arg(s, fname)
  local t = type(s)
  if t == "string" then
    return s
  end
  if t == "number" then
    return num2str(s)
  end
  error(format("bad argument #1 to '%s' (string expected, got %s)", fname, t),
        3)
end

-- The same with OpenResty's extra rule that nil means "" (escape_uri /
-- unescape_uri).  A tail call, so str_arg's error level still holds.
local function str_arg_nil_ok(s, fname)
  if s == nil then
    return ""
  end
  return str_arg(s, fname)
end

---------------------------------------------------------------------------
-- escape_uri / unescape_uri
---------------------------------------------------------------------------

-- "%XX" (uppercase hex) for every byte.
local ESC = {}
for b = 0, 255 do
  ESC[char(b)] = format("%%%02X", b)
end

-- The sets of bytes each escape type encodes, written as Lua pattern
-- classes (OpenResty's tables, types 0..6 = NGX_ESCAPE_URI ..
-- NGX_ESCAPE_MAIL_AUTH; lua-resty-core only accepts 0..6).
--
-- NOTE: type 0 is OpenResty's NGX_ESCAPE_URI table, which escapes only
-- space, "#", "%", "?", 0x00-0x1F and 0x7F-0xFF.  Recent nginx's own
-- ngx_escape_uri also escapes  " < > \ ^ ` { | }  for this type, but
-- ngx.escape_uri uses lua-nginx-module's copy of the tables (its tests
-- expect "<>[]{}\\\"" to stay unescaped with type 0).
-- NOTE: type 2 (the default) keeps alphanumerics and  - . _ ~ ! * ' ( )
-- unescaped, as OpenResty documents and tests ("-_.!~*'()" is returned
-- unchanged).
local ESC_PATTERN = {
  [0] = "[^!\"$&->@-~]",          -- uri: space # % ? ctl, 0x7F-0xFF
  [1] = "[^!\"$&-*,->@-~]",       -- args: as uri, plus "+"
  [2] = "[^0-9A-Za-z!'()*%-._~]", -- uri component
  [3] = "[^!$&(-~]",              -- html: space " # % ' ctl, 0x7F-0xFF
  [4] = "[^!#-&(-~]",             -- refresh: space " ' ctl, 0x7F-0xFF
  [5] = "[\0-\32%%]",             -- memcached: ctl, space, %
  [6] = "[\0-\32%%]",             -- mail_auth: same as memcached
}
local ESC_COMPONENT = ESC_PATTERN[2]

function M.escape_uri(s, esc_type)
  if type(s) ~= "string" then
    s = str_arg_nil_ok(s, "escape_uri")
  end
  local pat = ESC_COMPONENT
  if esc_type ~= nil then
    if type(esc_type) ~= "number" then
      error("\"type\" is not a number", 2)
    end
    if not (esc_type >= 0 and esc_type <= 6) then   -- also rejects NaN
      error("\"type\" " .. num2str(esc_type) .. " out of range", 2)
    end
    -- a fractional type is truncated, as the C int conversion does
    pat = ESC_PATTERN[floor(esc_type)]
  end
  return (gsub(s, pat, ESC))
end

-- "%XX" (either case of hex digit) -> byte
local UNESC = {}
do
  local digits = "0123456789abcdefABCDEF"
  for i = 1, #digits do
    local a = sub(digits, i, i)
    for j = 1, #digits do
      local c = sub(digits, j, j)
      UNESC[a .. c] = char(tonumber(a .. c, 16))
    end
  end
end

-- NGX_UNESCAPE_URI_COMPONENT as lua-nginx-module implements it:
--   "%" + two hex digits -> that byte; any other "%" is kept and the bytes
--   after it are processed normally ("%%41" -> "%A"); "+" -> " ".
-- "+" is replaced first so that an escaped "%2B" still decodes to "+".
local function unescape(s)
  if find(s, "+", 1, true) then
    s = gsub(s, "%+", " ")
  end
  if find(s, "%", 1, true) then
    s = gsub(s, "%%(%x%x)", UNESC)
  end
  return s
end

-- NOTE: a nil argument gives "" and a number is converted, as in OpenResty;
-- any other type raises "bad argument #1 ..." (lua-resty-core would apply
-- tostring() to it; the older C implementation raised this error).
function M.unescape_uri(s)
  if type(s) ~= "string" then
    s = str_arg_nil_ok(s, "unescape_uri")
  end
  return unescape(s)
end

---------------------------------------------------------------------------
-- encode_args / decode_args
---------------------------------------------------------------------------

local function arg_value_error(v)
  error("attempt to use " .. type(v) .. " as query arg value", 3)
end

-- Order of the entries of a multi-value table: numbers (ascending) first,
-- then strings, then anything else by type name.
local TYPE_RANK = { number = 1, string = 2 }
local function mixed_less(a, b)
  local ta, tb = type(a), type(b)
  if ta == tb and (ta == "number" or ta == "string") then
    return a < b
  end
  local ra, rb = TYPE_RANK[ta] or 3, TYPE_RANK[tb] or 3
  if ra ~= rb then
    return ra < rb
  end
  if ta ~= tb then
    return ta < tb
  end
  return false
end

-- NOTE (order): OpenResty walks the table with lua_next, so the order of
-- the pairs is unspecified.  Here the keys are sorted (byte-wise) so the
-- result is deterministic; the entries of a multi-value table are emitted
-- in index order (1, 2, 3, ...; other keys after those, sorted).
function M.encode_args(...)
  local nargs = select("#", ...)
  if nargs ~= 1 then
    error(format("expecting 1 argument but seen %d", nargs), 2)
  end
  local t = ...
  if type(t) ~= "table" then
    error(format("bad argument #1 to 'encode_args' (table expected, got %s)",
                 type(t)), 2)
  end

  local keys, nkeys = {}, 0
  for k in pairs(t) do
    if type(k) ~= "string" then
      error("attempt to use a non-string key in the \"args\" option table", 2)
    end
    nkeys = nkeys + 1
    keys[nkeys] = k
  end
  if nkeys == 0 then
    return ""
  end
  sort(keys)

  local out, n = {}, 0
  for i = 1, nkeys do
    local k = keys[i]
    local v = t[k]
    local tv = type(v)
    local ek = gsub(k, ESC_COMPONENT, ESC)
    if tv == "string" then
      n = n + 1
      out[n] = ek .. "=" .. gsub(v, ESC_COMPONENT, ESC)
    elseif tv == "number" then
      n = n + 1
      out[n] = ek .. "=" .. gsub(num2str(v), ESC_COMPONENT, ESC)
    elseif tv == "boolean" then
      if v then
        n = n + 1
        out[n] = ek
      end
    elseif tv == "table" then
      local sk, m = {}, 0
      for kk in pairs(v) do
        m = m + 1
        sk[m] = kk
      end
      if m > 0 then
        sort(sk, mixed_less)
      end
      for j = 1, m do
        local e = v[sk[j]]
        local te = type(e)
        if te == "boolean" then
          if e then
            n = n + 1
            out[n] = ek
          end
        elseif te == "string" then
          n = n + 1
          out[n] = ek .. "=" .. gsub(e, ESC_COMPONENT, ESC)
        elseif te == "number" then
          n = n + 1
          out[n] = ek .. "=" .. gsub(num2str(e), ESC_COMPONENT, ESC)
        else
          arg_value_error(e)
        end
      end
    else
      arg_value_error(v)
    end
  end
  return concat(out, "&", 1, n)
end

local DEFAULT_MAX_ARGS = 100

-- Adds one decoded pair the way OpenResty does: a repeated key turns the
-- value into an array of all its values, in order of appearance.
local function add_arg(t, k, v)
  local old = t[k]
  if old == nil then
    t[k] = v
  elseif type(old) == "table" then
    old[#old + 1] = v
  else
    t[k] = { old, v }
  end
end

-- Semantics of lua-nginx-module's ngx_http_lua_parse_args:
--  * pairs are separated by "&"; the first "=" splits key and value
--    (later "=" belong to the value);
--  * keys and values are unescaped ("%XX", "+" -> " ");
--  * "a" gives a = true, "a=" gives a = "";
--  * pairs whose (unescaped) key is empty are dropped, but still count
--    towards max_args;
--  * every "&" that ends a pair counts one argument; when the count reaches
--    max_args (> 0) parsing stops and the call returns tbl, "truncated"
--    (even if nothing follows that "&"); max_args <= 0 means unlimited.
function M.decode_args(...)
  local nargs = select("#", ...)
  if nargs ~= 1 and nargs ~= 2 then
    error(format("expecting 1 or 2 arguments but seen %d", nargs), 2)
  end
  local s, max = ...
  s = str_arg(s, "decode_args")
  -- NOTE: an explicit nil max_args means the default (OpenResty raises
  -- "number expected, got nil" for it).
  if max == nil then
    max = DEFAULT_MAX_ARGS
  else
    local nmax = tonumber(max)
    if type(max) ~= "number" and (type(max) ~= "string" or nmax == nil) then
      error(format("bad argument #2 to 'decode_args' (number expected, got %s)",
                   type(max)), 2)
    end
    -- fractional values are truncated towards zero, as LuaJIT's
    -- luaL_checkint does
    if nmax ~= nmax then
      nmax = 0
    elseif nmax >= 0 then
      nmax = floor(nmax)
    else
      nmax = -floor(-nmax)
    end
    max = nmax
  end

  local t = {}
  local len = #s
  local pos = 1
  local count = 0
  while pos <= len do
    local i = find(s, "[&=]", pos)
    local amp, k, v
    if i and byte(s, i) == 61 then -- "="
      k = sub(s, pos, i - 1)
      amp = find(s, "&", i + 1, true)
      v = unescape(sub(s, i + 1, (amp or len + 1) - 1))
    else
      amp = i
      k = sub(s, pos, (amp or len + 1) - 1)
      v = true
    end
    if k ~= "" then
      k = unescape(k)
      if k ~= "" then
        add_arg(t, k, v)
      end
    end
    if not amp then
      break
    end
    count = count + 1
    if max > 0 and count == max then
      return t, "truncated"
    end
    pos = amp + 1
  end
  return t
end

---------------------------------------------------------------------------
-- quote_sql_str
---------------------------------------------------------------------------

-- MySQL quoting: \0 \b \n \r \t \Z(26) \\ \' \" ; every other byte,
-- including UTF-8 bytes >= 0x80, is copied as is.
local SQL_ESC = {
  ["\0"] = "\\0", ["\b"] = "\\b", ["\n"] = "\\n", ["\r"] = "\\r",
  ["\t"] = "\\t", ["\26"] = "\\Z", ["\\"] = "\\\\", ["'"] = "\\'",
  ['"'] = '\\"',
}

function M.quote_sql_str(...)
  if select("#", ...) ~= 1 then
    error("expecting one argument", 2)
  end
  local s = ...
  s = str_arg(s, "quote_sql_str")
  return "'" .. gsub(s, "[\0\b\n\r\t\26\\'\"]", SQL_ESC) .. "'"
end

---------------------------------------------------------------------------
-- time
---------------------------------------------------------------------------

local WEEK = { [0] = "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" }
local MONTHS = { "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug",
                 "Sep", "Oct", "Nov", "Dec" }

-- nginx's ngx_gmtime limits: times before the epoch are taken as the epoch
-- and dates are capped at 9999-12-31 23:59:59.
local MAX_DAYS = 2932896          -- 9999-12-31 in days since 1970-01-01

-- Converts a time argument (integer or float seconds) to whole days since
-- the epoch and seconds of the day, with nginx's clamping.
local function split_time(sec)
  if mtype(sec) == "float" then
    if sec ~= sec or sec <= 0 then        -- NaN, negative: the epoch
      return 0, 0
    elseif sec >= 2^53 then               -- far beyond year 9999
      return MAX_DAYS, 86399
    end
    sec = tointeger(floor(sec))
  end
  if sec < 0 then
    return 0, 0
  end
  local days = sec // 86400
  if days > MAX_DAYS then
    return MAX_DAYS, 86399
  end
  return days, sec % 86400
end

-- Proleptic Gregorian calendar: days since 1970-01-01 -> year, month, day.
-- Counts in 400-year cycles of 146097 days starting on March 1st, so the
-- leap day is the last day of each (shifted) year.
local last_days, last_y, last_m, last_d = -1, 1970, 1, 1
local function civil_from_days(days)
  if days == last_days then
    return last_y, last_m, last_d
  end
  local z = days + 719468                 -- days since 0000-03-01
  local cycle = z // 146097
  local doc = z - cycle * 146097          -- day of the cycle, 0..146096
  local yoc = (doc - doc // 1460 + doc // 36524 - doc // 146096) // 365
  local doy = doc - (365 * yoc + yoc // 4 - yoc // 100) -- 0 = March 1st
  local mp = (5 * doy + 2) // 153         -- 0 = March .. 11 = February
  local d = doy - (153 * mp + 2) // 5 + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoc + cycle * 400
  if m <= 2 then
    y = y + 1
  end
  last_days, last_y, last_m, last_d = days, y, m, d
  return y, m, d
end

-- raises at the level of the API function's caller; `depth` is the number
-- of helper frames between the API function and this one
local function check_time_arg(sec, depth)
  if type(sec) ~= "number" then
    error("number argument only", 3 + (depth or 0))
  end
end

-- "Thu, 18 Nov 2010 11:27:35 GMT"
function M.http_time(sec)
  check_time_arg(sec)
  local days, s = split_time(sec)
  local y, m, d = civil_from_days(days)
  return format("%s, %02d %s %04d %02d:%02d:%02d GMT",
                WEEK[(days + 4) % 7], d, MONTHS[m], y,
                s // 3600, s % 3600 // 60, s % 60)
end

-- "Thu, 18-Nov-10 11:27:35 GMT"; like nginx's ngx_http_cookie_time the
-- year has two digits up to 2037 and four digits from 2038 on
-- ("Tue, 19-Jan-2038 03:14:08 GMT").
function M.cookie_time(sec)
  check_time_arg(sec)
  local days, s = split_time(sec)
  local y, m, d = civil_from_days(days)
  local yfmt
  if y > 2037 then
    yfmt = "%s, %02d-%s-%d %02d:%02d:%02d GMT"
  else
    yfmt = "%s, %02d-%s-%02d %02d:%02d:%02d GMT"
    y = y % 100
  end
  return format(yfmt, WEEK[(days + 4) % 7], d, MONTHS[m], y,
                s // 3600, s % 3600 // 60, s % 60)
end

-- OpenResty's utctime()/localtime()/today() take no argument and use the
-- current time; here an optional time in seconds may be given.  In moonwall
-- local time is UTC, so localtime == utctime.
local function time_or_now(sec)
  if sec == nil then
    return os_time()
  end
  check_time_arg(sec, 1)
  return sec
end

local function ymdhms(sec)
  local days, s = split_time(sec)
  local y, m, d = civil_from_days(days)
  return format("%04d-%02d-%02d %02d:%02d:%02d", y, m, d,
                s // 3600, s % 3600 // 60, s % 60)
end

function M.utctime(sec)
  return ymdhms(time_or_now(sec))
end

function M.localtime(sec)
  return ymdhms(time_or_now(sec))
end

function M.today(sec)
  local days = split_time(time_or_now(sec))
  local y, m, d = civil_from_days(days)
  return format("%04d-%02d-%02d", y, m, d)
end

-- parse_http_time: the formats (and the leniency) of nginx's
-- ngx_parse_http_time:
--   RFC 822/1123  "Sun, 06 Nov 1994 08:49:37 GMT"
--   RFC 850       "Sunday, 06-Nov-94 08:49:37 GMT"  (yy < 70 -> 20yy)
--   asctime       "Sun Nov  6 08:49:37 1994"
-- Like nginx it does not check the weekday name nor anything after the
-- seconds (RFC 822/850) or the year (asctime), identifies a month by its
-- first letters only, and accepts day 00 (the last day of the month
-- before).  Returns nil for a malformed string; like OpenResty also for a
-- result of -1 (1969-12-31 23:59:59), which is nginx's error value.

local MDAYS = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }

local function d2(s, p)                   -- two digits at p, or nil
  local a, b = byte(s, p, p + 1)
  if a and b and a >= 48 and a <= 57 and b >= 48 and b <= 57 then
    return (a - 48) * 10 + (b - 48)
  end
  return nil
end

local function d4(s, p)                   -- four digits at p, or nil
  local hi, lo = d2(s, p), d2(s, p + 2)
  if hi and lo then
    return hi * 100 + lo
  end
  return nil
end

-- C's unsigned division of the year -1 (2^64 - 1) by 4, 100 and 400: the
-- result nginx computes for January/February of year 0000.
local UMAX_DIV4 = 0x3FFFFFFFFFFFFFFF
local UMAX_DIV100 = 184467440737095516
local UMAX_DIV400 = 46116860184273879

function M.parse_http_time(str)
  if type(str) ~= "string" then
    error("string argument only", 2)
  end
  local len = #str
  local isoc = false
  -- skip the weekday: up to the first "," (RFC 822/850) or " " (asctime)
  local p = find(str, "[, ]")
  if not p then
    return nil
  end
  if byte(str, p) == 32 then
    isoc = true
  end
  p = find(str, "[^ ]", p + 1) or len + 1
  if len - p + 1 < 18 then
    return nil
  end

  local day, year, fmt
  if not isoc then
    day = d2(str, p)
    if not day then
      return nil
    end
    p = p + 2
    local c = byte(str, p)
    if c == 32 then                       -- " "
      if len - p + 1 < 18 then
        return nil
      end
      fmt = 822
    elseif c == 45 then                   -- "-"
      fmt = 850
    else
      return nil
    end
    p = p + 1
  end

  local c1, c2, c3 = byte(str, p, p + 2)
  local month
  if c1 == 74 then                        -- J: Jan, Jun, Jul
    month = c2 == 97 and 1 or (c3 == 110 and 6 or 7)
  elseif c1 == 70 then                    -- F
    month = 2
  elseif c1 == 77 then                    -- M: Mar, May
    month = c3 == 114 and 3 or 5
  elseif c1 == 65 then                    -- A: Apr, Aug
    month = c2 == 112 and 4 or 8
  elseif c1 == 83 then                    -- S
    month = 9
  elseif c1 == 79 then                    -- O
    month = 10
  elseif c1 == 78 then                    -- N
    month = 11
  elseif c1 == 68 then                    -- D
    month = 12
  else
    return nil
  end
  p = p + 3
  local sep = byte(str, p)
  if (fmt == 822 and sep ~= 32) or (fmt == 850 and sep ~= 45) then
    return nil
  end
  p = p + 1                               -- (asctime: not checked)

  if fmt == 822 then
    year = d4(str, p)
    if not year then
      return nil
    end
    p = p + 4
  elseif fmt == 850 then
    year = d2(str, p)
    if not year then
      return nil
    end
    year = year + (year < 70 and 2000 or 1900)
    p = p + 2
  else                                    -- asctime: " 6" / "06" / "6"
    if byte(str, p) == 32 then
      p = p + 1
    end
    local a = byte(str, p)
    if not a or a < 48 or a > 57 then
      return nil
    end
    day = a - 48
    p = p + 1
    local b = byte(str, p)
    if b ~= 32 then
      if not b or b < 48 or b > 57 then
        return nil
      end
      day = day * 10 + (b - 48)
      p = p + 1
    end
    if len - p + 1 < 14 then
      return nil
    end
  end

  if byte(str, p) ~= 32 then
    return nil
  end
  local hour = d2(str, p + 1)
  if not hour or byte(str, p + 3) ~= 58 then
    return nil
  end
  local min = d2(str, p + 4)
  if not min or byte(str, p + 6) ~= 58 then
    return nil
  end
  local sec = d2(str, p + 7)
  if not sec then
    return nil
  end
  if isoc then
    if byte(str, p + 9) ~= 32 then
      return nil
    end
    year = d4(str, p + 10)
    if not year then
      return nil
    end
  end

  if hour > 23 or min > 59 or sec > 59 then
    return nil
  end
  if day == 29 and month == 2 then
    if year % 4 ~= 0 or (year % 100 == 0 and year % 400 ~= 0) then
      return nil
    end
  elseif day > MDAYS[month] then
    return nil
  end

  -- days since 1970-01-01, counting years from March 1st (months 3..14)
  local y, m = year, month
  if m <= 2 then
    m = m + 12
    y = y - 1
  end
  local leapdays
  if y < 0 then
    -- year 0000, January/February: nginx's unsigned year wraps around;
    -- reproduce its (meaningless but deterministic) result.  Lua integer
    -- arithmetic wraps like the C code's 64-bit arithmetic.
    leapdays = UMAX_DIV4 - UMAX_DIV100 + UMAX_DIV400
  else
    leapdays = y // 4 - y // 100 + y // 400
  end
  local days = 365 * y + leapdays + (367 * (m - 2)) // 12 - 30 + day - 1
               - 719527 + 31 + 28
  local t = days * 86400 + hour * 3600 + min * 60 + sec
  if t == -1 then
    return nil
  end
  return t
end

return M
