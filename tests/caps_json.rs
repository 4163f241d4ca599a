//! JSON: `require("cjson")` and `require("cjson.safe")`, lua-cjson 2.1 as
//! OpenResty ships it. Pure guest computation, available without a grant.
//! Expected messages are lua-cjson's own (checked against it).

use crate::common;

use common::site::Site;
use common::{run, run_with, stdout_of, test_limits};
use moonwall::{Limit, Outcome};

/// Run `body` after `local cjson = require("cjson")`; its stdout.
#[track_caller]
fn json(body: &str) -> String {
    stdout_of(&format!(
        "local cjson = require('cjson')\nlocal safe = require('cjson.safe')\n{body}"
    ))
}

#[test]
fn round_trips_every_type() {
    let out = json(
        r#"
local function show(v)
  local t = type(v)
  if t == "number" then return math.type(v) .. ":" .. tostring(v) end
  if v == cjson.null then return "null" end
  return t .. ":" .. tostring(v)
end
for _, v in ipairs({ "text", "", 0, -7, 1.5, -0.25, 1e300, true, false, cjson.null,
                     math.maxinteger, math.mininteger }) do
  local text = cjson.encode(v)
  print(text, show(cjson.decode(text)))
end
print(cjson.encode(nil))
local doc = { name = "moonwall", list = { 1, 2.5, "three", false, cjson.null, { nested = { "deep" } } },
              empty = {}, n = 42 }
local back = cjson.decode(cjson.encode(doc))
print(back.name, back.n, math.type(back.n), #back.list, back.list[2], back.list[3], back.list[4],
      back.list[5] == cjson.null, back.list[6].nested[1], next(back.empty))
print(cjson.encode({ 1, "two", { 3 } }), cjson.encode({ only = "key" }))
"#,
    );
    assert_eq!(
        out,
        "\"text\"\tstring:text\n\
         \"\"\tstring:\n\
         0\tinteger:0\n\
         -7\tinteger:-7\n\
         1.5\tfloat:1.5\n\
         -0.25\tfloat:-0.25\n\
         1e+300\tfloat:1e+300\n\
         true\tboolean:true\n\
         false\tboolean:false\n\
         null\tnull\n\
         9223372036854775807\tinteger:9223372036854775807\n\
         -9223372036854775808\tinteger:-9223372036854775808\n\
         null\n\
         moonwall\t42\tinteger\t6\t2.5\tthree\tfalse\ttrue\tdeep\tnil\n\
         [1,\"two\",[3]]\t{\"only\":\"key\"}\n"
    );
}

#[test]
fn numbers_keep_lua_integer_and_float_types() {
    let out = json(
        r#"
for _, text in ipairs({ "12", "-0", "1.0", "1e2", "1E-2", "0.1", "9223372036854775807",
                        "9223372036854775808", "-9223372036854775808", "-9223372036854775809",
                        "123456789012345678901234567890", "1e400", "2.5e-3" }) do
  local v = cjson.decode(text)
  print(text, math.type(v), string.format(math.type(v) == "integer" and "%d" or "%.17g", v))
end
for _, v in ipairs({ 3.0, 2^53, 1/3, 1e15, 1e16, 123456789012345, 1e-5, -0.0, 0.1 }) do
  io.write(cjson.encode(v), " ")
end
print()
"#,
    );
    assert_eq!(
        out,
        "12\tinteger\t12\n\
         -0\tinteger\t0\n\
         1.0\tfloat\t1\n\
         1e2\tfloat\t100\n\
         1E-2\tfloat\t0.01\n\
         0.1\tfloat\t0.10000000000000001\n\
         9223372036854775807\tinteger\t9223372036854775807\n\
         9223372036854775808\tfloat\t9.2233720368547758e+18\n\
         -9223372036854775808\tinteger\t-9223372036854775808\n\
         -9223372036854775809\tfloat\t-9.2233720368547758e+18\n\
         123456789012345678901234567890\tfloat\t1.2345678901234568e+29\n\
         1e400\tfloat\tinf\n\
         2.5e-3\tfloat\t0.0025000000000000001\n\
         3 9.007199254741e+15 0.33333333333333 1e+15 1e+16 123456789012345 1e-05 -0 0.1 \n"
    );
}

/// `body` with generous fuel: for the tests whose point is volume.
#[track_caller]
fn json_heavy(body: &str) -> String {
    let mut limits = test_limits();
    limits.fuel = 3_000_000_000;
    let (report, output) = run_with(&format!("local cjson = require('cjson')\n{body}"), &limits);
    let stdout = String::from_utf8(output.stdout).expect("utf-8 output");
    assert_eq!(
        report.outcome,
        Outcome::Completed,
        "stdout so far: {stdout}"
    );
    stdout
}

#[test]
fn floats_decode_exactly() {
    // The decoder's fast path for plain decimals must agree bit for bit with
    // Lua's own reading of the same text (strtod).
    let out = json_heavy(
        r#"
math.randomseed(7)
local bad = 0
for _ = 1, 20000 do
  local digits = {}
  for j = 1, math.random(1, 12) do digits[j] = math.random(0, 9) end
  local text = table.concat(digits)
  if math.random(3) > 1 then
    local frac = {}
    for j = 1, math.random(1, 10) do frac[j] = math.random(0, 9) end
    text = text .. "." .. table.concat(frac)
  end
  if math.random(3) == 1 then text = text .. "e" .. math.random(-30, 30) end
  if math.random(2) == 1 then text = "-" .. text end
  local mine, lua = cjson.decode(text), tonumber(text)
  if math.type(mine) ~= math.type(lua) or string.pack("n", mine) ~= string.pack("n", lua) then
    bad = bad + 1
    print(text, mine, lua)
  end
end
print("mismatches", bad)
"#,
    );
    assert_eq!(out, "mismatches\t0\n");
}

#[test]
fn floats_encode_like_printf() {
    // The encoder formats floats itself (exactly, ties to even); it must
    // print what %.<precision>g prints, for every precision.
    let out = json_heavy(
        r#"
math.randomseed(11)
local bad = 0
local function check(v, precision)
  cjson.encode_number_precision(precision)
  local mine = cjson.encode(v)
  local expected = string.format("%." .. precision .. "g", v)
  if math.type(v) == "float" and mine ~= expected then
    bad = bad + 1
    if bad < 10 then print(precision, string.format("%.17g", v), mine, expected) end
  end
end
for _ = 1, 20000 do
  local precision = math.random(1, 16)
  local kind = math.random(5)
  local v
  if kind == 1 then v = string.unpack("d", string.pack("i8", math.random(math.mininteger, math.maxinteger)))
  elseif kind == 2 then v = math.random(-1000000000, 1000000000) / 10 ^ math.random(0, 12)
  elseif kind == 3 then v = math.random(0, 100000) / 2 ^ math.random(0, 12) -- exact ties
  elseif kind == 4 then v = math.random(0, 999) * 10.0 ^ math.random(-40, 40)
  else v = math.random() * 10.0 ^ math.random(-25, 25) end
  if v == v and v ~= math.huge and v ~= -math.huge then check(v + 0.0, precision) end
end
for _, v in ipairs({ 0.5, 1.5, 2.5, 0.125, 1e-300, 5e-324, 1.7976931348623157e308, 2^100, 1e22, 1e23 }) do
  for precision = 1, 16 do check(v, precision) end
end
print("mismatches", bad)
"#,
    );
    assert_eq!(out, "mismatches\t0\n");
}

#[test]
fn settings_return_their_values_and_instances_are_independent() {
    let out = json(
        r#"
print(cjson.encode_sparse_array())
print(cjson.encode_max_depth(), cjson.decode_max_depth(), cjson.encode_number_precision())
print(cjson.encode_keep_buffer(), cjson.encode_invalid_numbers(), cjson.decode_invalid_numbers())
print(cjson.encode_empty_table_as_object(), cjson.decode_array_with_array_mt(),
      cjson.encode_escape_forward_slash(), cjson.encode_skip_unsupported_value_types(),
      cjson.decode_allow_comment(), "[" .. cjson.encode_indent() .. "]")
print(cjson.encode_sparse_array(true, 3, 5))
print(cjson.encode_sparse_array(nil, nil, 7))
print(cjson.encode_max_depth(20), cjson.decode_max_depth("30"), cjson.encode_number_precision(16))
print(cjson.encode_invalid_numbers("null"), cjson.encode_invalid_numbers("on"), cjson.encode_invalid_numbers(false))
print(cjson.encode_empty_table_as_object("off"), cjson.encode_empty_table_as_object("on"))
print(cjson.encode_keep_buffer(false), cjson.encode_indent("\t") == "\t", cjson.encode_indent("") == "")
local other = cjson.new()
cjson.encode_number_precision(3)
cjson.encode_escape_forward_slash(false)
print(cjson.encode(1/3), cjson.encode("a/b"), other.encode(1/3), other.encode("a/b"))
print(other.encode_number_precision(), other.encode_escape_forward_slash(), other.null == cjson.null,
      other.array_mt == cjson.array_mt, other.empty_array == cjson.empty_array)
print(cjson._NAME, cjson._VERSION, safe._NAME)
print(select(2, pcall(cjson.encode_number_precision, 0)))
print(select(2, pcall(cjson.encode_number_precision, 17)))
print(select(2, pcall(cjson.encode_number_precision, "five")))
print(select(2, pcall(cjson.encode_keep_buffer, nil, true)))
print(select(2, pcall(cjson.decode_max_depth, 0)))
print(select(2, pcall(cjson.encode_invalid_numbers, -2)))
print(select(2, pcall(cjson.encode_sparse_array, "not quite on")))
print(select(2, pcall(cjson.encode_sparse_array, true, -1)))
print(select(2, pcall(cjson.encode_indent, {})))
"#,
    );
    assert_eq!(
        out,
        "false\t2\t10\n\
         1000\t1000\t14\n\
         true\tfalse\ttrue\n\
         true\tfalse\ttrue\tfalse\tfalse\t[]\n\
         true\t3\t5\n\
         true\t3\t7\n\
         20\t30\t16\n\
         null\ttrue\tfalse\n\
         false\ttrue\n\
         false\ttrue\ttrue\n\
         0.333\t\"a/b\"\t0.33333333333333\t\"a\\/b\"\n\
         14\ttrue\ttrue\ttrue\ttrue\n\
         cjson\t2.1.0.11\tcjson\n\
         bad argument #1 to 'cjson.encode_number_precision' (expected integer between 1 and 16)\n\
         bad argument #1 to 'cjson.encode_number_precision' (expected integer between 1 and 16)\n\
         bad argument #1 to 'cjson.encode_number_precision' (number expected, got string)\n\
         bad argument #2 to 'cjson.encode_keep_buffer' (found too many arguments)\n\
         bad argument #1 to 'cjson.decode_max_depth' (expected integer between 1 and 2147483647)\n\
         bad argument #1 to 'cjson.encode_invalid_numbers' (invalid option '-2')\n\
         bad argument #1 to 'cjson.encode_sparse_array' (invalid option 'not quite on')\n\
         bad argument #2 to 'cjson.encode_sparse_array' (expected integer between 0 and 2147483647)\n\
         bad argument #1 to 'cjson.encode_indent' (string expected, got table)\n"
    );
}

#[test]
fn empty_tables_and_array_metatables() {
    let out = json(
        r#"
print(cjson.encode({}), cjson.encode(cjson.empty_array), cjson.encode({ list = cjson.empty_array }))
print(cjson.encode(setmetatable({}, cjson.array_mt)), cjson.encode(setmetatable({}, cjson.empty_array_mt)))
-- empty_array_mt: arrays stay arrays; a table with other keys becomes [] (as in lua-cjson)
print(cjson.encode(setmetatable({ 1, 2 }, cjson.empty_array_mt)), cjson.encode(setmetatable({ a = 1 }, cjson.empty_array_mt)))
-- array_mt: the array part only, holes as null, other keys ignored
local t = setmetatable({ "one", "two", nil, "four", foo = "bar" }, cjson.array_mt)
print(cjson.encode(t))
-- a __len metamethod makes an array of that length (read through __index)
print(cjson.encode(setmetatable({}, { __len = function() return 3 end, __index = function(_, i) return i * 10 end })))
print(cjson.encode_empty_table_as_object(false), cjson.encode({}), cjson.encode({ a = {} }))
cjson.encode_empty_table_as_object(true)
local decoded = cjson.decode('{"list":[],"obj":{}}')
print(cjson.encode(decoded.list), getmetatable(decoded.list) == nil)
cjson.decode_array_with_array_mt(true)
decoded = cjson.decode('{"list":[],"obj":{},"nums":[1,2]}')
print(cjson.encode(decoded.list), cjson.encode(decoded.obj), cjson.encode(decoded.nums),
      getmetatable(decoded.list) == cjson.array_mt, getmetatable(decoded.obj))
print(cjson.encode({ [1] = "a", [2] = "b" }), cjson.encode({ [1.5] = "x" }), cjson.encode({ [-1] = "x" }))
print(cjson.encode({ ["1"] = "string key" }), cjson.encode({ [0] = "zero" }))
"#,
    );
    assert_eq!(
        out,
        "{}\t[]\t{\"list\":[]}\n\
         []\t[]\n\
         [1,2]\t[]\n\
         [\"one\",\"two\",null,\"four\"]\n\
         [10,20,30]\n\
         false\t[]\t{\"a\":[]}\n\
         {}\ttrue\n\
         []\t{}\t[1,2]\ttrue\tnil\n\
         [\"a\",\"b\"]\t{\"1.5\":\"x\"}\t{\"-1\":\"x\"}\n\
         {\"1\":\"string key\"}\t{\"0\":\"zero\"}\n"
    );
}

#[test]
fn sparse_arrays() {
    let out = json(
        r#"
print(cjson.encode({ [3] = "x" }), cjson.encode({ [1] = 1, [10] = 10 }))
print(pcall(cjson.encode, { [1] = 1, [11] = 11 }))
print(pcall(cjson.encode, { [1000000] = true }))
print(cjson.encode_sparse_array(true))
print(cjson.encode({ [1] = 1, [11] = 11 }) == '{"1":1,"11":11}' or cjson.encode({ [1] = 1, [11] = 11 }) == '{"11":11,"1":1}')
print(cjson.encode_sparse_array(false, 0))
print(#cjson.encode({ [1000] = 1 }))
print(cjson.encode_sparse_array(false, 2, 3))
print(cjson.encode({ [1] = "one", [4] = "four" }), select(2, pcall(cjson.encode, { [1] = "one", [5] = "five" })))
"#,
    );
    assert_eq!(
        out,
        "[null,null,\"x\"]\t[1,null,null,null,null,null,null,null,null,10]\n\
         false\tCannot serialise table: excessively sparse array\n\
         false\tCannot serialise table: excessively sparse array\n\
         true\t2\t10\n\
         true\n\
         false\t0\t10\n\
         4998\n\
         false\t2\t3\n\
         [\"one\",null,null,\"four\"]\tCannot serialise table: excessively sparse array\n"
    );
}

#[test]
fn strings_escapes_and_unicode() {
    let out = json(
        r#"
print(cjson.encode("quote\" backslash\\ slash/ nl\n cr\r tab\t bs\b ff\f nul\0 one\1 us\31 del\127"))
print(cjson.encode("high \200\255 bytes") == '"high \200\255 bytes"')
print(cjson.encode_escape_forward_slash(false), cjson.encode("a/b"))
local all = {}
for i = 0, 255 do all[#all + 1] = string.char(i) end
all = table.concat(all)
print(cjson.decode(cjson.encode(all)) == all)
print(cjson.decode([["\u00e9 \u20AC \ud83d\ude00 \u0041 \/ \" \\ \b\f\n\r\t"]]))
print(#cjson.decode([["a\u0000b"]]), cjson.decode([["\uF800"]]) == "\239\160\128")
print(cjson.decode('"raw\tcontrol and \195\169 bytes pass"'))
for _, text in ipairs({ [["\uDC00\uD800"]], [["\uDB00"]], [["\uDB00\uDB00"]], [["\uDB00\uD"]],
                        [["\u12"]], [["\x41"]], [["\q"]], '"open', '"\\' }) do
  print(select(2, pcall(cjson.decode, text)))
end
"#,
    );
    assert_eq!(
        out,
        "\"quote\\\" backslash\\\\ slash\\/ nl\\n cr\\r tab\\t bs\\b ff\\f nul\\u0000 one\\u0001 us\\u001f del\\u007f\"\n\
         true\n\
         false\t\"a/b\"\n\
         true\n\
         é € 😀 A / \" \\ \u{8}\u{c}\n\r\t\n\
         3\ttrue\n\
         raw\tcontrol and é bytes pass\n\
         Expected value but found invalid unicode escape code at character 2\n\
         Expected value but found invalid unicode escape code at character 2\n\
         Expected value but found invalid unicode escape code at character 2\n\
         Expected value but found invalid unicode escape code at character 2\n\
         Expected value but found invalid unicode escape code at character 2\n\
         Expected value but found invalid escape code at character 2\n\
         Expected value but found invalid escape code at character 2\n\
         Expected value but found unexpected end of string at character 6\n\
         Expected value but found invalid escape code at character 2\n"
    );
}

#[test]
fn every_byte_at_every_offset() {
    // Strings are scanned eight bytes at a time: each byte value at each
    // offset of strings around that width, against a plain-Lua escaper.
    let out = json_heavy(
        r#"
local function reference(s, slash)
  return '"' .. s:gsub('[%c"\\/\127]', function(c)
    if c == '"' then return '\\"' elseif c == "\\" then return "\\\\"
    elseif c == "/" then return slash and "\\/" or "/"
    elseif c == "\n" then return "\\n" elseif c == "\r" then return "\\r"
    elseif c == "\t" then return "\\t" elseif c == "\b" then return "\\b"
    elseif c == "\f" then return "\\f"
    else return string.format("\\u%04x", c:byte()) end
  end) .. '"'
end
local bad = 0
for _, slash in ipairs({ true, false }) do
  cjson.encode_escape_forward_slash(slash)
  for b = 0, 255 do
    local c = string.char(b)
    for _, len in ipairs({ 1, 2, 7, 8, 9, 15, 16, 17, 24, 33 }) do
      for pos = 1, len do
        local s = string.rep("a", pos - 1) .. c .. string.rep("\200", len - pos)
        local text = cjson.encode(s)
        if text ~= reference(s, slash) or cjson.decode(text) ~= s then bad = bad + 1 end
        if b ~= 0 or pos > 1 then
          local raw = '"' .. string.rep("x", pos - 1) .. (c == '"' and '\\"' or c == "\\" and "\\\\" or c)
                      .. string.rep("y", len) .. '"'
          if cjson.decode(raw) ~= string.rep("x", pos - 1) .. c .. string.rep("y", len) then bad = bad + 1 end
        end
      end
    end
  end
end
print("bad", bad)
"#,
    );
    assert_eq!(out, "bad\t0\n");
}

#[test]
fn decode_errors_name_the_token_and_character() {
    let out = json(
        r#"
for _, text in ipairs({
  '{ "unexpected eof": ', '{ "extra data": true }, false', [[ { "bad escape \q code" } ]],
  [[ { "bad unicode \u0f6 escape" } ]], ' [ "bad barewood", test ] ', '[ -+12 ]', '-v',
  '[ 0.4eg10 ]', '', '   ', '[1,]', '{"a":1,}', '{"a" 1}', '{1:2}', '{"a":1 "b":2}', '[1 2]',
  '[1]x', 'nul', '\0"\0"', '"\0', '{"a"', ':',
}) do
  print(select(2, pcall(cjson.decode, text)))
end
print(select(2, pcall(cjson.decode)), select(2, pcall(cjson.decode, "1", "2")))
print(select(2, pcall(cjson.decode, {})))
-- called from Lua code, the message gets the caller's position as usual
print(select(2, pcall(function() local v = cjson.decode("x") return v end)))
"#,
    );
    assert_eq!(
        out,
        "Expected value but found T_END at character 21\n\
         Expected the end but found T_COMMA at character 23\n\
         Expected object key string but found invalid escape code at character 16\n\
         Expected object key string but found invalid unicode escape code at character 17\n\
         Expected value but found invalid token at character 20\n\
         Expected value but found invalid number at character 3\n\
         Expected value but found invalid number at character 1\n\
         Expected comma or array end but found invalid token at character 6\n\
         Expected value but found T_END at character 1\n\
         Expected value but found T_END at character 4\n\
         Expected value but found T_ARR_END at character 4\n\
         Expected object key string but found T_OBJ_END at character 8\n\
         Expected colon but found T_INTEGER at character 6\n\
         Expected object key string but found T_INTEGER at character 2\n\
         Expected comma or object end but found T_STRING at character 8\n\
         Expected comma or array end but found T_INTEGER at character 4\n\
         Expected the end but found invalid token at character 4\n\
         Expected value but found invalid token at character 1\n\
         JSON parser does not support UTF-16 or UTF-32\n\
         JSON parser does not support UTF-16 or UTF-32\n\
         Expected colon but found T_END at character 5\n\
         Expected value but found T_COLON at character 1\n\
         bad argument #1 to 'cjson.decode' (expected 1 argument)\tbad argument #1 to 'cjson.decode' (expected 1 argument)\n\
         bad argument #1 to 'cjson.decode' (string expected, got table)\n\
         t.lua:15: Expected value but found invalid token at character 1\n"
    );
}

#[test]
fn encode_errors() {
    let out = json(
        r#"
local cycle = {}
cycle[1] = cycle
local self_ref = {}
self_ref.me = self_ref
for _, value in ipairs({ print, coroutine.create(print), { [true] = 1 }, { [{}] = 1 }, 0/0,
                         math.huge, -math.huge, { x = { 1, print } }, cycle, self_ref }) do
  print(select(2, pcall(cjson.encode, value)))
end
print(select(2, pcall(cjson.encode)), select(2, pcall(cjson.encode, 1, 2)))
print(select(2, pcall(cjson.encode, { [math.huge] = 1 })))
cjson.encode_max_depth(5)
print(cjson.encode({ { { { { "nested" } } } } }), select(2, pcall(cjson.encode, { { { { { { "nested" } } } } } })))
print(select(2, pcall(cjson.encode, cycle)))
"#,
    );
    assert_eq!(
        out,
        "Cannot serialise function: type not supported\n\
         Cannot serialise thread: type not supported\n\
         Cannot serialise boolean: table key must be a number or string\n\
         Cannot serialise table: table key must be a number or string\n\
         Cannot serialise number: must not be NaN or Infinity\n\
         Cannot serialise number: must not be NaN or Infinity\n\
         Cannot serialise number: must not be NaN or Infinity\n\
         Cannot serialise function: type not supported\n\
         Cannot serialise, excessive nesting (1001)\n\
         Cannot serialise, excessive nesting (1001)\n\
         bad argument #1 to 'cjson.encode' (expected 1 argument)\tbad argument #1 to 'cjson.encode' (expected 1 argument)\n\
         Cannot serialise number: must not be NaN or Infinity\n\
         [[[[[\"nested\"]]]]]\tCannot serialise, excessive nesting (6)\n\
         Cannot serialise, excessive nesting (6)\n"
    );
}

#[test]
fn safe_module_returns_nil_and_the_message() {
    let out = json(
        r#"
print(safe.encode({ 1, 2 }), safe.decode("[1,2]")[2])
print(safe.encode(print))
print(safe.decode("Oops"))
print(safe.decode('{"a":'))
local cycle = {}
cycle.c = cycle
print(safe.encode(cycle))
print(safe.new().decode("Oops"))
print(safe.new().encode_number_precision(), safe.null == cjson.null, safe.empty_array == cjson.empty_array)
-- argument-count mistakes still raise, as in lua-cjson
print(pcall(safe.encode, "a", "b"))
print(pcall(safe.decode))
-- cjson (unsafe) still raises
print(pcall(cjson.decode, "Oops"))
"#,
    );
    assert_eq!(
        out,
        "[1,2]\t2\n\
         nil\tCannot serialise function: type not supported\n\
         nil\tExpected value but found invalid token at character 1\n\
         nil\tExpected value but found T_END at character 6\n\
         nil\tCannot serialise, excessive nesting (1001)\n\
         nil\tExpected value but found invalid token at character 1\n\
         14\ttrue\ttrue\n\
         false\tbad argument #1 to 'cjson.safe.encode' (expected 1 argument)\n\
         false\tbad argument #1 to 'cjson.safe.decode' (expected 1 argument)\n\
         false\tExpected value but found invalid token at character 1\n"
    );
}

#[test]
fn invalid_numbers() {
    let out = json(
        r#"
local function show(text)
  local ok, v = pcall(cjson.decode, text)
  if not ok then return v end
  return cjson.encode(v)
end
cjson.encode_invalid_numbers(true)
-- decoding them is on by default, as in lua-cjson
print(show("0x6.ffp1"), show("[ 0123, 00.33 ]"))
print(show("[ +Inf, Inf, -Inf ]"), show("[ +Infinity, Infinity, -Infinity ]"), show("[ +NaN, NaN, -NaN ]"))
print(show("Infrared"), show("Noodle"), show("+1"))
print(cjson.decode_invalid_numbers(false))
print(show("0x6"), show("[ 0123, 00.33 ]"), show("[ +Inf ]"), show("NaN"), show("-Infinity"))
print(cjson.encode({ 0/0, math.huge, -math.huge }))
cjson.encode_invalid_numbers("null")
print(cjson.encode({ 0/0, math.huge, -math.huge }))
"#,
    );
    assert_eq!(
        out,
        "13.9921875\t[123,0.33]\n\
         [Infinity,Infinity,-Infinity]\t[Infinity,Infinity,-Infinity]\t[NaN,NaN,NaN]\n\
         Expected the end but found invalid token at character 4\t\
         Expected value but found invalid token at character 1\t1\n\
         false\n\
         Expected value but found invalid number at character 1\t\
         Expected value but found invalid number at character 3\t\
         Expected value but found invalid token at character 3\t\
         Expected value but found invalid token at character 1\t\
         Expected value but found invalid number at character 1\n\
         [NaN,Infinity,-Infinity]\n\
         [null,null,null]\n"
    );
}

#[test]
fn indent_comments_and_unsupported_values() {
    let out = json(
        r#"
cjson.encode_indent("  ")
print(cjson.encode({ 1, { 2, 3 }, {}, { a = { b = true } } }))
cjson.encode_indent("")
print(cjson.encode({ 1, { 2 } }))
print(select(2, pcall(cjson.decode, "[1] // trailing")))
cjson.decode_allow_comment(true)
print(cjson.encode(cjson.decode("/* lead */ [1, // one\n 2 /* two */] // end")))
print(select(2, pcall(cjson.decode, "[1] /* open")), select(2, pcall(cjson.decode, "[1] / 2")))
cjson.encode_skip_unsupported_value_types(true)
print(cjson.encode({ 1, print, 3 }), cjson.encode({ print }), cjson.encode({ f = print }), "[" .. cjson.encode(print) .. "]")
"#,
    );
    assert_eq!(
        out,
        "[\n  1,\n  [\n    2,\n    3\n  ],\n  {},\n  {\n    \"a\": {\n      \"b\": true\n    }\n  }\n]\n\
         [1,[2]]\n\
         Expected the end but found invalid token at character 5\n\
         [1,2]\n\
         Expected the end but found unclosed multi-line comment at character 12\t\
         Expected the end but found invalid token at character 5\n\
         [1,3]\t[]\t{}\t[]\n"
    );
}

#[test]
fn null_is_ngx_null() {
    let site = Site::start(
        "json_null",
        "",
        "",
        "",
        &[(
            "root/t.lua",
            r#"
local cjson = require("cjson")
local safe = require("cjson.safe")
ngx.say(cjson.null == ngx.null, safe.null == ngx.null, cjson.decode("null") == ngx.null)
ngx.say(cjson.encode({ ngx.null, value = ngx.null }) == '[null]' or cjson.encode({ ngx.null }))
ngx.say(cjson.encode({ a = ngx.null }))
"#,
        )],
    );
    let reply = site.get("/t.lua");
    assert!(
        reply.is_ok_with("truetruetrue\n[null]\n{\"a\":null}\n"),
        "{reply:?}"
    );
}

#[test]
fn deep_nesting_gives_the_depth_error() {
    let out = json(
        r#"
print(select(2, pcall(cjson.decode, string.rep("[", 1000000))))
print(select(2, pcall(cjson.decode, string.rep('{"a":', 1000000))))
print(select(2, pcall(cjson.decode, string.rep("[", 1100) .. "1" .. string.rep("]", 1100))))
print(#cjson.encode(cjson.decode(string.rep("[", 1000) .. string.rep("]", 1000))))
cjson.decode_max_depth(5)
print(select(2, pcall(cjson.decode, '{"a":{"b":{"c":{"d":{"e":{"f":"nested"}}}}}}')))
print(cjson.encode(cjson.decode('[[[[["nested"]]]]]')))
local nest = {}
for _ = 1, 1100 do nest = { nest } end
print(select(2, pcall(cjson.encode, nest)))
"#,
    );
    assert_eq!(
        out,
        "Found too many nested data structures (1001) at character 1001\n\
         Found too many nested data structures (1001) at character 5001\n\
         Found too many nested data structures (1001) at character 1001\n\
         2000\n\
         Found too many nested data structures (6) at character 26\n\
         [[[[[\"nested\"]]]]]\n\
         Cannot serialise, excessive nesting (1001)\n"
    );
}

#[test]
fn unbounded_depth_settings_still_never_overflow_the_stack() {
    // With the depth bounds set to their maximum, nesting is bounded by
    // Lua's own stack (the same error) or by the run's memory: never by a
    // C or wasm stack overflow, never a fault.
    for script in [
        "cjson.decode_max_depth(2^31 - 1)\nprint(select(2, pcall(cjson.decode, string.rep('[', 1000000))))",
        "cjson.decode_max_depth(2^31 - 1)\nprint(select(2, pcall(cjson.decode, string.rep('{\"k\":', 1000000))))",
        "cjson.encode_max_depth(2^31 - 1)\nlocal c = {} c[1] = c\nprint(select(2, pcall(cjson.encode, c)))",
        "cjson.encode_max_depth(2^31 - 1)\nlocal c = {} c.k = c\nprint(select(2, pcall(cjson.encode, c)))",
    ] {
        let mut limits = test_limits();
        limits.memory_bytes = 256 << 20;
        limits.fuel = 5_000_000_000;
        let (report, output) = run_with(
            &format!("local cjson = require('cjson')\n{script}"),
            &limits,
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        match &report.outcome {
            Outcome::Completed => assert!(
                stdout.starts_with("Found too many nested data structures (")
                    || stdout.starts_with("Cannot serialise, excessive nesting ("),
                "{script}: {stdout}"
            ),
            Outcome::LimitExceeded(Limit::Memory { .. }) => {}
            other => panic!("{script}: {other:?} {stdout}"),
        }
    }
}

#[test]
fn deep_documents_within_the_bound_round_trip() {
    let out = json(
        r#"
cjson.decode_max_depth(100000)
cjson.encode_max_depth(100000)
local text = string.rep('{"k":[', 10000) .. "1" .. string.rep("]}", 10000)
local v = cjson.decode(text)
print(cjson.encode(v) == text)
"#,
    );
    assert_eq!(out, "true\n");
}

#[test]
fn long_strings_and_big_documents_are_linear() {
    // Megabytes of input within 3 billion instructions (about 60 per input
    // byte here): anything quadratic would need millions of times more.
    let out = json_heavy(
        r#"
local big = string.rep('"\\/\n\1abc', 50000)           -- 400 KB, escape-heavy
local text = cjson.encode(big)
print(#text, cjson.decode(text) == big)
local plain = string.rep("xxxxxxxxxxxxxxxxxxxx", 100000)  -- 2 MB
print(#cjson.decode('"' .. plain .. '"'), #cjson.encode(plain))
print(#cjson.decode('"' .. string.rep("\\u00e9\\ud83d\\ude00", 50000) .. '"'))
local list = cjson.decode("[" .. string.rep("1,", 100000) .. "1]")
print(#list, #cjson.encode(list))
local digits = string.rep("7777777777", 50000)
print(math.type(cjson.decode(digits)), cjson.decode("0." .. digits))
"#,
    );
    assert_eq!(
        out,
        "850002\ttrue\n2000000\t2000002\n300000\n100001\t200003\nfloat\t0.77777777777778\n"
    );
}

#[test]
fn huge_inputs_only_cost_the_runs_memory() {
    // A document bigger than the run's memory: the run stops at its memory
    // limit (a limit, not a fault), whatever the encoder or decoder was doing.
    let mut limits = test_limits();
    limits.memory_bytes = 24 << 20;
    limits.fuel = 3_000_000_000;
    for script in [
        "local s = string.rep('\\1\\1\\1\\1\\1\\1\\1\\1\\1\\1', 600000) local t = cjson.encode(s) print(#t)",
        "local t = {} for i = 1, 200000 do t[i] = string.rep('x', 100) end print(#cjson.encode(t))",
        "cjson.encode_sparse_array(false, 0) print(#cjson.encode({ [math.maxinteger] = 1 }))",
        "local s = '[' .. string.rep('{\"key\":[1,2,3]},', 400000) .. '1]' print(#cjson.decode(s))",
    ] {
        let (report, output) = run_with(
            &format!("local cjson = require('cjson')\n{script}"),
            &limits,
        );
        assert!(
            matches!(report.outcome, Outcome::LimitExceeded(Limit::Memory { .. })),
            "{script}: {:?} {}",
            report.outcome,
            String::from_utf8_lossy(&output.stdout)
        );
    }
    // and the sandbox keeps serving normal runs afterwards
    let (report, output) = run("print(require('cjson').encode({ ok = true }))");
    assert_eq!(report.outcome, Outcome::Completed);
    assert_eq!(output.stdout, b"{\"ok\":true}\n");
}

#[test]
fn available_without_any_grant() {
    // The site's policy grants nothing: JSON is pure computation.
    let site = Site::start(
        "json_no_grant",
        "",
        "",
        "",
        &[(
            "root/t.lua",
            r#"
local cjson = require("cjson")
local body = cjson.decode('{"items":[1,2,3],"name":"x"}')
ngx.header["Content-Type"] = "application/json"
ngx.say(cjson.encode({ count = #body.items }))
"#,
        )],
    );
    let reply = site.get("/t.lua");
    assert!(reply.is_ok_with("{\"count\":3}\n"), "{reply:?}");
}
