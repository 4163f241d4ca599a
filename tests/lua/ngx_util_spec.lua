-- Self-checking spec for guest-lua/lua/ngx_util.lua.
--
-- Run with the module source loaded into the global `ngx_util`:
--
--   M=target/debug/moonwall
--   $M exec -e "ngx_util = (function() $(cat guest-lua/lua/ngx_util.lua) end)()" \
--       tests/lua/ngx_util_spec.lua
--
-- Expected values come from OpenResty's documentation and its test suite
-- (lua-nginx-module t/006-escape.t, t/021-cookie-time.t, t/029-http-time.t,
-- t/030-uri-args.t, t/115-quote-sql-str.t), ported as assertions, plus edge
-- cases derived from the lua-nginx-module / nginx sources.  Prints "ok N"
-- (N = number of checks) at the end; any failure raises an error.

local U = ngx_util
assert(type(U) == "table", "global ngx_util (the module's table) is missing")

local format, byte, char, rep = string.format, string.byte, string.char,
                                string.rep
local concat = table.concat

local N = 0

local function show(v)
  if type(v) == "string" then
    return format("%q", v)
  end
  return tostring(v)
end

local function fail(what, msg)
  error(format("FAILED case %d (%s): %s", N, what, msg), 2)
end

-- one check: got == expected
local function eq(got, exp, what)
  N = N + 1
  if got ~= exp then
    fail(what, "expected " .. show(exp) .. ", got " .. show(got))
  end
end

-- one check: a condition
local function ok(cond, what, detail)
  N = N + 1
  if not cond then
    fail(what, detail or "condition is false")
  end
end

local function deep_equal(a, b)
  if type(a) ~= "table" or type(b) ~= "table" then
    return a == b
  end
  for k, v in pairs(a) do
    if not deep_equal(v, b[k]) then
      return false
    end
  end
  for k in pairs(b) do
    if a[k] == nil then
      return false
    end
  end
  return true
end

local function dump(v)
  if type(v) ~= "table" then
    return show(v)
  end
  local keys = {}
  for k in pairs(v) do
    keys[#keys + 1] = k
  end
  table.sort(keys, function(x, y) return tostring(x) < tostring(y) end)
  local parts = {}
  for _, k in ipairs(keys) do
    parts[#parts + 1] = "[" .. show(k) .. "]=" .. dump(v[k])
  end
  return "{" .. concat(parts, ", ") .. "}"
end

-- one check: deep table equality
local function same(got, exp, what)
  N = N + 1
  if not deep_equal(got, exp) then
    fail(what, "expected " .. dump(exp) .. ", got " .. dump(got))
  end
end

-- one check: fn(...) raises an error whose message contains `needle`
local function raises(needle, what, fn, ...)
  N = N + 1
  local okc, err = pcall(fn, ...)
  if okc then
    fail(what, "expected an error containing " .. show(needle)
               .. ", but the call succeeded")
  end
  if type(err) ~= "string" or not string.find(err, needle, 1, true) then
    fail(what, "expected an error containing " .. show(needle) .. ", got "
               .. show(err))
  end
end

-- decode_args returning (tbl, err): checks both
local function decodes(s, max, exp_tbl, exp_err, what)
  local t, err
  if max == nil then
    t, err = U.decode_args(s)
  else
    t, err = U.decode_args(s, max)
  end
  same(t, exp_tbl, what)
  N = N - 1  -- the table and the error are one case
  eq(err, exp_err, what .. " (second return value)")
end

local function hex(b)
  return format("%%%02X", b)
end

---------------------------------------------------------------------------
-- escape_uri
---------------------------------------------------------------------------
local esc = U.escape_uri

-- t/006-escape.t
eq(esc("a 你"), "a%20%E4%BD%A0", "escape_uri UTF-8 and space")
eq(esc("a+b"), "a%2Bb", "escape_uri plus")
eq(esc("\"a/b={}:<>;&[]\\^"), "%22a%2Fb%3D%7B%7D%3A%3C%3E%3B%26%5B%5D%5C%5E",
   "escape_uri reserved punctuation")
eq(esc(" "), "%20", "escape_uri single space")
eq(esc("abc"), "abc", "escape_uri nothing to escape")
eq(esc(""), "", "escape_uri empty string")
eq(esc(nil), "", "escape_uri nil")
eq(esc(32), "32", "escape_uri integer")
eq(esc("-_.!~*'()"), "-_.!~*'()", "escape_uri unreserved marks kept")
eq(esc(",$@|`"), "%2C%24%40%7C%60", "escape_uri , $ @ | `")
eq(esc("https://www.google.com", 0), "https://www.google.com",
   "escape_uri type 0 plain URL")
eq(esc("https://www.google.com/query?q=test", 0),
   "https://www.google.com/query%3Fq=test", "escape_uri type 0 query")
eq(esc("https://www.google.com/query?\r\nq=test", 0),
   "https://www.google.com/query%3F%0D%0Aq=test", "escape_uri type 0 CRLF")
eq(esc("-_.~!*'();:@&=+$,/?#", 0), "-_.~!*'();:@&=+$,/%3F%23",
   "escape_uri type 0 reserved")
eq(esc("<>[]{}\\\" ", 0), "<>[]{}\\\"%20", "escape_uri type 0 unsafe kept")
do
  local u = "https://www.google.com/?t=abc@ :"
  eq(esc(u, 0), "https://www.google.com/%3Ft=abc@%20:", "escape_uri type 0")
  eq(esc(u, 1), "https://www.google.com/%3Ft=abc@%20:", "escape_uri type 1")
  eq(esc(u, 2), "https%3A%2F%2Fwww.google.com%2F%3Ft%3Dabc%40%20%3A",
     "escape_uri type 2")
  eq(esc(u, 3), "https://www.google.com/?t=abc@%20:", "escape_uri type 3")
  eq(esc(u, 4), "https://www.google.com/?t=abc@%20:", "escape_uri type 4")
  eq(esc(u, 5), "https://www.google.com/?t=abc@%20:", "escape_uri type 5")
  eq(esc(u, 6), "https://www.google.com/?t=abc@%20:", "escape_uri type 6")
end
raises("\"type\" -1 out of range", "escape_uri type -1", esc, "x", -1)
raises("\"type\" 10 out of range", "escape_uri type 10", esc, "x", 10)
raises("\"type\" is not a number", "escape_uri type true", esc, "x", true)
raises("bad argument #1 to 'escape_uri' (string expected, got table)",
       "escape_uri table argument", esc, {})
raises("bad argument #1 to 'escape_uri' (string expected, got boolean)",
       "escape_uri boolean argument", esc, true)
eq(esc(1.5), "1.5", "escape_uri float")
eq(esc(3.0), "3", "escape_uri integral float formatted like LuaJIT")
eq(esc("a+b c", 1), "a%2Bb%20c", "escape_uri type 1 escapes +")
eq(esc("100%\"'", 3), "100%25%22%27", "escape_uri type 3 (html)")
eq(esc("100%\"'", 4), "100%%22%27", "escape_uri type 4 keeps %")
eq(esc("a b%\1\127\200", 5), "a%20b%25%01\127\200",
   "escape_uri type 5 keeps DEL and high bytes")
eq(esc("\0"), "%00", "escape_uri NUL byte")
eq(esc("\255\254"), "%FF%FE", "escape_uri uppercase hex")

-- every byte 0..255, for every type (one case per type); the escaped sets
-- are those of lua-nginx-module's tables
do
  local function range(set, a, b)
    for i = a, b do set[i] = true end
    return set
  end
  local function with(set, s)
    for i = 1, #s do set[byte(s, i)] = true end
    return set
  end
  local ctl_hi = function() return range(range({}, 0, 32), 127, 255) end
  local escaped = {
    [0] = with(ctl_hi(), "#%?"),
    [1] = with(ctl_hi(), "#%?+"),
    [2] = (function()
      local s = {}
      for b = 0, 255 do
        local c = char(b)
        if not c:find("^[%w%-%._~!%*'%(%)]$") then s[b] = true end
      end
      return s
    end)(),
    [3] = with(ctl_hi(), "\"#%'"),
    [4] = with(ctl_hi(), "\"'"),
    [5] = with(range({}, 0, 32), "%"),
    [6] = with(range({}, 0, 32), "%"),
  }
  for t = 0, 6 do
    N = N + 1
    for b = 0, 255 do
      local exp = escaped[t][b] and hex(b) or char(b)
      local got = esc(char(b), t)
      if got ~= exp then
        fail("escape_uri byte sweep, type " .. t,
             format("byte %d: expected %s, got %s", b, show(exp), show(got)))
      end
    end
  end
  -- the default type is 2
  N = N + 1
  for b = 0, 255 do
    if esc(char(b)) ~= esc(char(b), 2) then
      fail("escape_uri default type", "byte " .. b .. " differs from type 2")
    end
  end
end

---------------------------------------------------------------------------
-- unescape_uri
---------------------------------------------------------------------------
local unesc = U.unescape_uri

eq(unesc("a%20%e4%bd%a0"), "a 你", "unescape_uri lowercase hex UTF-8")
eq(unesc("a%20%E4%BD%A0"), "a 你", "unescape_uri uppercase hex UTF-8")
eq(unesc(nil), "", "unescape_uri nil")
eq(unesc(32), "32", "unescape_uri number")
eq(unesc(""), "", "unescape_uri empty string")
eq(unesc("%ua%%20%au"), "%ua% %au", "unescape_uri invalid sequences")
eq(unesc("%a"), "%a", "unescape_uri truncated escape, good first digit")
eq(unesc("%u"), "%u", "unescape_uri truncated escape, bad first digit")
eq(unesc("%"), "%", "unescape_uri lone percent")
eq(unesc("good%20job%"), "good job%", "unescape_uri trailing percent")
eq(unesc("b%20r56+7"), "b r56 7", "unescape_uri + is a space (README)")
eq(unesc("try %search%%20%again%"), "try %search% %again%",
   "unescape_uri README invalid-escape example")
eq(unesc("%2B"), "+", "unescape_uri %2B stays +")
eq(unesc("a+b%2bc++"), "a b+c  ", "unescape_uri mixed + and %2b")
eq(unesc("%%41"), "%A", "unescape_uri percent before a valid escape")
eq(unesc("%4"), "%4", "unescape_uri one hex digit at the end")
eq(unesc("%zz%4g"), "%zz%4g", "unescape_uri non-hex digits")
eq(unesc("%00%0a"), "\0\n", "unescape_uri NUL and newline")
eq(unesc("%25"), "%", "unescape_uri escaped percent")
eq(unesc("%2541"), "%41", "unescape_uri decodes only once")
raises("bad argument #1 to 'unescape_uri' (string expected, got table)",
       "unescape_uri table argument", unesc, {})

-- every %XX (both cases) decodes to its byte; every byte round-trips
do
  N = N + 1
  for b = 0, 255 do
    local lo, up = format("%%%02x", b), format("%%%02X", b)
    if unesc(lo) ~= char(b) or unesc(up) ~= char(b) then
      fail("unescape_uri %XX sweep", "byte " .. b)
    end
  end
  local all = {}
  for b = 0, 255 do all[#all + 1] = char(b) end
  all = concat(all)
  for _, t in ipairs({ 1, 2 }) do
    N = N + 1
    for b = 0, 255 do
      if unesc(esc(char(b), t)) ~= char(b) then
        fail("escape/unescape round trip type " .. t, "byte " .. b)
      end
    end
    eq(unesc(esc(all, t)), all, "escape/unescape round trip of all bytes, type "
       .. t)
  end
  eq(unesc(esc(all .. all)), all .. all, "round trip of 512 bytes")
end

---------------------------------------------------------------------------
-- encode_args (keys are sorted by this implementation)
---------------------------------------------------------------------------
local enc = U.encode_args

eq(enc({ a = "bar", b = "foo" }), "a=bar&b=foo", "encode_args sanity")
eq(enc({ a = nil }), "", "encode_args nil value")
eq(enc({}), "", "encode_args empty table")
eq(enc({ a = { 9, 2 }, b = 3 }), "a=9&a=2&b=3", "encode_args multi-value")
eq(enc({ a = true, foo = 3 }), "a&foo=3", "encode_args true value")
eq(enc({ a = false, foo = 3 }), "foo=3", "encode_args false value")
eq(enc({ bar = { 32, true }, foo = 3 }), "bar=32&bar&foo=3",
   "encode_args true inside multi-value")
eq(enc({ a = { 32, true }, foo = 3, bar = 5 }), "a=32&a&bar=5&foo=3",
   "encode_args trailing bare key")
eq(enc({ a = { 32, false }, foo = 3, bar = 5 }), "a=32&bar=5&foo=3",
   "encode_args false inside multi-value")
eq(enc({ ["a b"] = { 32, false }, foo = 3, bar = 5 }), "a%20b=32&bar=5&foo=3",
   "encode_args escaped key, false")
eq(enc({ ["a b"] = { 32, true }, foo = 3, bar = 5 }),
   "a%20b=32&a%20b&bar=5&foo=3", "encode_args escaped key, true")
eq(enc({ bar = "-_.!~*'()", foo = ",$@|`" }),
   "bar=-_.!~*'()&foo=%2C%24%40%7C%60", "encode_args escaping")
eq(enc({ foo = 3, ["b r"] = "hello world" }), "b%20r=hello%20world&foo=3",
   "encode_args README example")
eq(enc({ baz = { 32, "hello" } }), "baz=32&baz=hello",
   "encode_args README multi-value example")
eq(enc({ a = true, b = 1 }), "a&b=1", "encode_args README boolean example")
eq(enc({ a = {}, b = 1 }), "b=1", "encode_args empty value table")
eq(enc({ a = { false } }), "", "encode_args only false values")
eq(enc({ a = 1.5, b = 2.0 }), "a=1.5&b=2", "encode_args float values")
eq(enc({ a = "x&y=z" }), "a=x%26y%3Dz", "encode_args escapes & and =")
eq(enc({ ["a+b"] = "c d+e" }), "a%2Bb=c%20d%2Be", "encode_args escapes +")
eq(enc({ ["ключ"] = "знач" }), "%D0%BA%D0%BB%D1%8E%D1%87=%D0%B7%D0%BD%D0%B0%D1%87",
   "encode_args UTF-8")
eq(enc({ [""] = "v" }), "=v", "encode_args empty key")
eq(enc({ k = "" }), "k=", "encode_args empty value")
raises("attempt to use function as query arg value",
       "encode_args function value", enc, { bar = print, foo = 3 })
raises("attempt to use thread as query arg value",
       "encode_args thread value", enc, { co = coroutine.create(print) })
raises("attempt to use table as query arg value",
       "encode_args nested table", enc, { a = { {} } })
raises("attempt to use a non-string key in the \"args\" option table",
       "encode_args integer key", enc, { "x" })
raises("bad argument #1 to 'encode_args' (table expected, got boolean)",
       "encode_args boolean argument", enc, true)
raises("expecting 1 argument but seen 0", "encode_args no argument", enc)
raises("expecting 1 argument but seen 2", "encode_args two arguments", enc,
       {}, {})

---------------------------------------------------------------------------
-- decode_args
---------------------------------------------------------------------------
local dec = U.decode_args

-- t/030-uri-args.t (ngx.decode_args and the shared parser behind
-- ngx.req.get_uri_args)
decodes("a=bar&b=foo", nil, { a = "bar", b = "foo" }, nil, "decode_args sanity")
decodes("a=bar&b=foo&a=baz", nil, { a = { "bar", "baz" }, b = "foo" }, nil,
        "decode_args multi-value")
decodes("", nil, {}, nil, "decode_args empty string")
decodes("a&b", nil, { a = true, b = true }, nil, "decode_args bare keys")
decodes("a=&b=", nil, { a = "", b = "" }, nil, "decode_args empty values")
decodes("a=bar&b=foo", 1, { a = "bar" }, "truncated", "decode_args max 1")
decodes("a=bar&b=foo", -1, { a = "bar", b = "foo" }, nil,
        "decode_args max -1 (unlimited)")
decodes("f+f=bar&B=foo", nil, { ["f f"] = "bar", B = "foo" }, nil,
        "decode_args + in key")
decodes("method=zadd&key=User%3A1227713%3Alikes%3Atwitters&arg1=1356514698"
        .. "&arg2=780984852", 0,
        { method = "zadd", key = "User:1227713:likes:twitters",
          arg1 = "1356514698", arg2 = "780984852" }, nil,
        "decode_args escaped value, max 0")
decodes("a=3&b=4&c", nil, { a = "3", b = "4", c = true }, nil,
        "decode_args trailing bare key")
decodes("foo&baz=&bar=42", nil, { foo = true, baz = "", bar = "42" }, nil,
        "decode_args bare, empty and plain")
decodes("%3d&b%20r=4%61+2", nil, { ["="] = true, ["b r"] = "4a 2" }, nil,
        "decode_args escaped key and value")
decodes("=&&", nil, {}, nil, "decode_args only separators")
decodes("foo=32&foo==&foo=baz", nil, { foo = { "32", "=", "baz" } }, nil,
        "decode_args = inside a repeated value")
decodes("foo=32&foo==&bar=baz", nil, { foo = { "32", "=" }, bar = "baz" }, nil,
        "decode_args two-valued key")
decodes("&=", nil, {}, nil, "decode_args empty key with =")
decodes("foo===", nil, { foo = "==" }, nil, "decode_args first = splits")
decodes("=hello&=world", nil, {}, nil, "decode_args empty keys dropped")
decodes("foo=3&bar=4&baz=2", 2, { foo = "3", bar = "4" }, "truncated",
        "decode_args max 2 after key=value")
decodes("foo=3&bar&baz=2", 2, { foo = "3", bar = true }, "truncated",
        "decode_args max 2 after orphan key")
decodes("foo=3&=hello&=world", 2, { foo = "3" }, "truncated",
        "decode_args empty keys count towards max")
decodes("a=1&", 1, { a = "1" }, "truncated",
        "decode_args truncated at a trailing &")
decodes("a=1", 1, { a = "1" }, nil, "decode_args exactly max without &")
decodes("a&a=1", nil, { a = { true, "1" } }, nil, "decode_args true then value")
decodes("a=1&a=2&a=3", nil, { a = { "1", "2", "3" } }, nil,
        "decode_args three values")
decodes("k=%E4%BD%A0+%25", nil, { k = "你 %" }, nil,
        "decode_args UTF-8 and %25")
decodes("a=%zz&b=%", nil, { a = "%zz", b = "%" }, nil,
        "decode_args invalid escapes kept")
decodes("%00=%00", nil, { ["\0"] = "\0" }, nil, "decode_args NUL bytes")
decodes(123, nil, { ["123"] = true }, nil, "decode_args number argument")
decodes("a=1&b=2", "1", { a = "1" }, "truncated",
        "decode_args numeric string max")
do
  local function args_str(n)
    local p = {}
    for i = 1, n do p[i] = "a" .. i .. "=" .. i end
    return concat(p, "&")
  end
  local function expect(n)
    local t = {}
    for i = 1, n do t["a" .. i] = tostring(i) end
    return t
  end
  decodes(args_str(102), nil, expect(100), "truncated",
          "decode_args default max 100")
  decodes(args_str(103), 102, expect(102), "truncated",
          "decode_args custom max 102")
  decodes(args_str(105), 0, expect(105), nil, "decode_args max 0 unlimited")
  decodes(args_str(100), nil, expect(100), nil, "decode_args exactly 100")
end
raises("bad argument #1 to 'decode_args' (string expected, got nil)",
       "decode_args nil", dec, nil)
raises("bad argument #2 to 'decode_args' (number expected, got table)",
       "decode_args bad max", dec, "a=1", {})
raises("expecting 1 or 2 arguments but seen 0", "decode_args no argument", dec)
raises("expecting 1 or 2 arguments but seen 3", "decode_args three arguments",
       dec, "a", 1, 2)

-- encode/decode round trip
do
  local all = {}
  for b = 0, 255 do all[#all + 1] = char(b) end
  all = concat(all)
  local t = { [all] = all, x = { "1", "2 3", "+" }, flag = true,
              ["ü"] = "é&=" }
  same(dec(enc(t)), t, "encode_args/decode_args round trip")
end

---------------------------------------------------------------------------
-- quote_sql_str
---------------------------------------------------------------------------
local q = U.quote_sql_str

-- t/115-quote-sql-str.t
eq(q("a\0b\0"), "'a\\0b\\0'", "quote_sql_str NUL")
eq(q("a\tb\t"), "'a\\tb\\t'", "quote_sql_str tab")
eq(q("a\bb\b"), "'a\\bb\\b'", "quote_sql_str backspace")
eq(q("a\026b\026"), "'a\\Zb\\Z'", "quote_sql_str ctrl-Z")
eq(q(""), "''", "quote_sql_str empty string")
eq(q("it's"), "'it\\'s'", "quote_sql_str single quote")
eq(q('say "hi"'), "'say \\\"hi\\\"'", "quote_sql_str double quotes")
eq(q("back\\slash"), "'back\\\\slash'", "quote_sql_str backslash")
eq(q("a\nb\rc"), "'a\\nb\\rc'", "quote_sql_str newline and CR")
eq(q("你好"), "'你好'", "quote_sql_str UTF-8 untouched")
eq(q(123), "'123'", "quote_sql_str number")
eq(q("' OR 1=1 --"), "'\\' OR 1=1 --'", "quote_sql_str injection attempt")
raises("bad argument #1 to 'quote_sql_str' (string expected, got nil)",
       "quote_sql_str nil", q, nil)
raises("expecting one argument", "quote_sql_str no argument", q)
do
  local special = { [0] = "\\0", [8] = "\\b", [9] = "\\t", [10] = "\\n",
                    [13] = "\\r", [26] = "\\Z", [34] = "\\\"", [39] = "\\'",
                    [92] = "\\\\" }
  N = N + 1
  for b = 0, 255 do
    local exp = "'" .. (special[b] or char(b)) .. "'"
    if q(char(b)) ~= exp then
      fail("quote_sql_str byte sweep", "byte " .. b .. ": got " .. show(q(char(b))))
    end
  end
end

---------------------------------------------------------------------------
-- http_time / cookie_time
---------------------------------------------------------------------------
local ht, ct = U.http_time, U.cookie_time

eq(ht(1290079655), "Thu, 18 Nov 2010 11:27:35 GMT", "http_time README")
eq(ht(0), "Thu, 01 Jan 1970 00:00:00 GMT", "http_time epoch")
eq(ht(951782400), "Tue, 29 Feb 2000 00:00:00 GMT", "http_time 2000 leap day")
eq(ht(68169600), "Tue, 29 Feb 1972 00:00:00 GMT", "http_time 1972 leap day")
eq(ht(1709164800), "Thu, 29 Feb 2024 00:00:00 GMT", "http_time 2024 leap day")
eq(ht(946684799), "Fri, 31 Dec 1999 23:59:59 GMT", "http_time end of 1999")
eq(ht(2147483648), "Tue, 19 Jan 2038 03:14:08 GMT", "http_time past 2^31")
eq(ht(4107542399), "Sun, 28 Feb 2100 23:59:59 GMT", "http_time 2100 not leap")
eq(ht(4107542400), "Mon, 01 Mar 2100 00:00:00 GMT", "http_time 2100-03-01")
eq(ht(253402300799), "Fri, 31 Dec 9999 23:59:59 GMT", "http_time year 9999")
eq(ht(1e15), "Fri, 31 Dec 9999 23:59:59 GMT", "http_time capped at 9999")
eq(ht(math.maxinteger), "Fri, 31 Dec 9999 23:59:59 GMT",
   "http_time maxinteger capped")
eq(ht(-1), "Thu, 01 Jan 1970 00:00:00 GMT", "http_time negative -> epoch")
eq(ht(1290079655.9), "Thu, 18 Nov 2010 11:27:35 GMT", "http_time float floored")
raises("number argument only", "http_time string argument", ht, "1")

eq(ct(1290079655), "Thu, 18-Nov-10 11:27:35 GMT", "cookie_time README")
eq(ct(0), "Thu, 01-Jan-70 00:00:00 GMT", "cookie_time epoch")
eq(ct(946684800), "Sat, 01-Jan-00 00:00:00 GMT", "cookie_time year 2000")
eq(ct(1230768000), "Thu, 01-Jan-09 00:00:00 GMT", "cookie_time two-digit 09")
eq(ct(2147483647), "Tue, 19-Jan-2038 03:14:07 GMT",
   "cookie_time four-digit year from 2038")
eq(ct(4102444800), "Fri, 01-Jan-2100 00:00:00 GMT", "cookie_time 2100")
raises("number argument only", "cookie_time nil argument", ct, nil)

---------------------------------------------------------------------------
-- parse_http_time
---------------------------------------------------------------------------
local parse = U.parse_http_time

eq(parse("Thu, 18 Nov 2010 11:27:35 GMT"), 1290079655, "parse_http_time README")
eq(parse("abc"), nil, "parse_http_time garbage")
eq(parse(""), nil, "parse_http_time empty string")
eq(parse("Sun, 06 Nov 1994 08:49:37 GMT"), 784111777, "parse_http_time RFC 1123")
eq(parse("Sunday, 06-Nov-94 08:49:37 GMT"), 784111777, "parse_http_time RFC 850")
eq(parse("Sun Nov  6 08:49:37 1994"), 784111777, "parse_http_time asctime")
eq(parse("Sun Nov 06 08:49:37 1994"), 784111777,
   "parse_http_time asctime two-digit day")
eq(parse("Thu, 01 Jan 1970 00:00:00 GMT"), 0, "parse_http_time epoch")
eq(parse("Tue, 29 Feb 2000 00:00:00 GMT"), 951782400,
   "parse_http_time 2000 leap day")
eq(parse("Sat, 29 Feb 2020 12:00:00 GMT"), 1582977600,
   "parse_http_time 2020 leap day")
eq(parse("Mon, 29 Feb 2100 00:00:00 GMT"), nil,
   "parse_http_time 2100 is not a leap year")
eq(parse("Thu, 29 Feb 2001 00:00:00 GMT"), nil,
   "parse_http_time 2001 is not a leap year")
eq(parse("Thu, 31 Apr 2010 00:00:00 GMT"), nil, "parse_http_time 31 April")
eq(parse("Thu, 32 Jan 2010 00:00:00 GMT"), nil, "parse_http_time day 32")
eq(parse("Thu, 18 Nov 2010 24:00:00 GMT"), nil, "parse_http_time hour 24")
eq(parse("Thu, 18 Nov 2010 11:60:00 GMT"), nil, "parse_http_time minute 60")
eq(parse("Thu, 18 Nov 2010 11:27:60 GMT"), nil, "parse_http_time second 60")
eq(parse("Thu, 18 Xyz 2010 11:27:35 GMT"), nil, "parse_http_time bad month")
eq(parse("Thu, 18 Nov 10 11:27:35 GMT"), nil,
   "parse_http_time RFC 1123 needs a 4-digit year")
eq(parse("Thu, 18-Nov-2010 11:27:35 GMT"), nil,
   "parse_http_time RFC 850 with a 4-digit year")
eq(parse("Thu, 18 Nov 2010 11:27"), nil, "parse_http_time truncated")
eq(parse("Thu, 18 Nov 2010 11.27.35 GMT"), nil, "parse_http_time bad separator")
eq(parse("Thu, 1 Nov 2010 11:27:35 GMT"), nil,
   "parse_http_time RFC 1123 needs a 2-digit day")
eq(parse("Thursday, 18-Nov-69 11:27:35 GMT"), 3151999655,
   "parse_http_time RFC 850 year 69 is 2069")
eq(parse("Wednesday, 18-Nov-70 00:00:00 GMT"), 27734400,
   "parse_http_time RFC 850 year 70 is 1970")
eq(parse("Fri, 31 Dec 9999 23:59:59 GMT"), 253402300799,
   "parse_http_time year 9999")
eq(parse("Fri, 01 Jan 1960 00:00:00 GMT"), -315619200,
   "parse_http_time before the epoch is negative")
eq(parse("Wed, 31 Dec 1969 23:59:59 GMT"), nil,
   "parse_http_time -1 is nginx's error value")
eq(parse("Xyz, 18 Nov 2010 11:27:35 GMT"), 1290079655,
   "parse_http_time weekday is not checked")
eq(parse("Thu,18 Nov 2010 11:27:35"), 1290079655,
   "parse_http_time no space after comma, no zone")
eq(parse("Thu, 00 Nov 2010 00:00:00 GMT"), 1288483200,
   "parse_http_time day 00 is the day before the 1st (as nginx)")
eq(parse("Sat, 01 Jan 0000 00:00:00 GMT"), -62167208832,
   "parse_http_time year 0000 January (nginx's unsigned wrap)")
raises("string argument only", "parse_http_time number argument", parse, 1)

-- http_time and parse_http_time are inverse functions
do
  N = N + 1
  local t = 0
  while t < 253402300799 do
    local s = ht(t)
    if parse(s) ~= t then
      fail("http_time/parse_http_time round trip",
           format("%d -> %s -> %s", t, s, tostring(parse(s))))
    end
    t = t + 86400 * 97 + 3607
  end
end

---------------------------------------------------------------------------
-- utctime / localtime / today
---------------------------------------------------------------------------
eq(U.utctime(1290079655), "2010-11-18 11:27:35", "utctime")
eq(U.utctime(0), "1970-01-01 00:00:00", "utctime epoch")
eq(U.utctime(951868799), "2000-02-29 23:59:59", "utctime leap day")
eq(U.utctime(253402300799), "9999-12-31 23:59:59", "utctime year 9999")
eq(U.localtime(1290079655), "2010-11-18 11:27:35", "localtime is UTC")
eq(U.today(1290079655), "2010-11-18", "today")
eq(U.today(4107542400), "2100-03-01", "today 2100-03-01")
eq(U.today(0), "1970-01-01", "today epoch")
ok(U.utctime():find("^%d%d%d%d%-%d%d%-%d%d %d%d:%d%d:%d%d$") ~= nil,
   "utctime() without argument", "got " .. show(U.utctime()))
ok(U.today():find("^%d%d%d%d%-%d%d%-%d%d$") ~= nil, "today() without argument")
ok(U.localtime():sub(1, 10) == U.today(), "localtime() date is today()")
raises("number argument only", "utctime string argument", U.utctime, "x")

-- calendar sweep against os.date (UTC), 1970..2400
do
  N = N + 1
  local days = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" }
  local months = { "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug",
                   "Sep", "Oct", "Nov", "Dec" }
  local t = 0
  while t < 13569465600 do -- 2400-01-01
    local d = os.date("!*t", t)
    local exp = format("%s, %02d %s %04d %02d:%02d:%02d GMT", days[d.wday],
                       d.day, months[d.month], d.year, d.hour, d.min, d.sec)
    if ht(t) ~= exp then
      fail("http_time vs os.date sweep", format("%d: expected %s, got %s",
           t, exp, ht(t)))
    end
    local exp2 = format("%04d-%02d-%02d %02d:%02d:%02d", d.year, d.month,
                        d.day, d.hour, d.min, d.sec)
    if U.utctime(t) ~= exp2 then
      fail("utctime vs os.date sweep", format("%d: expected %s, got %s",
           t, exp2, U.utctime(t)))
    end
    t = t + 86400 * 13 + 4001
  end
end

---------------------------------------------------------------------------
-- argument errors point at the caller (error level 2, like C functions)
---------------------------------------------------------------------------
do
  local function where(fn, ...)
    local okc, err = pcall(fn, ...)
    return not okc and type(err) == "string" and err or ""
  end
  local function pos_ok(err)
    return err:find("ngx_util_spec.lua:%d+: ") ~= nil
  end
  local function call_esc() local r = U.escape_uri({}); return r end
  local function call_enc() local r = U.encode_args({ a = print }); return r end
  local function call_utc() local r = U.utctime("x"); return r end
  local function call_parse() local r = U.parse_http_time(false); return r end
  for name, fn in pairs({ escape_uri = call_esc, encode_args = call_enc,
                          utctime = call_utc,
                          parse_http_time = call_parse }) do
    local err = where(fn)
    ok(pos_ok(err), name .. " error position is the caller's", "got " .. show(err))
  end
end

-- implementation choices documented in the module
eq(esc("a b", 2.0), "a%20b", "escape_uri integral float type")
eq(esc("a b?", 0.5), "a%20b%3F", "escape_uri fractional type truncated")
do
  local t, err = U.decode_args("a=1&b=2", nil)
  same({ t, err }, { { a = "1", b = "2" } },
       "decode_args explicit nil max_args is the default")
end

print("ok " .. N)
