-- expect: completed
-- why: integer/float edge cases that would trap as raw wasm instructions (div overflow, float->int truncation) must be handled by Lua
local mi, ma = math.mininteger, math.maxinteger
assert(mi // -1 == mi and mi % -1 == 0)
assert(not pcall(function() return 1 // 0 end) and not pcall(function() return 1 % 0 end))
assert(1.0 // 0 == math.huge and (-1) // 0.0 == -math.huge)
assert(math.tointeger(2^63) == nil and math.tointeger(-2^63) == mi and math.tointeger(0/0) == nil)
assert(math.floor(1e300) == 1e300 and math.ceil(-1e300) == -1e300)
assert(not pcall(string.format, "%d", 2^63) and not pcall(string.rep, "x", 1e300))
assert(math.abs(mi) == mi and -mi == mi and mi * -1 == mi)
assert((1 << 64) == 0 and (1 >> 64) == 0 and (1 << -1) == 0 and (-1 >> 1) == ma and (1 << 63) == mi)
assert(math.fmod(mi, -1) == 0 and not pcall(math.fmod, 1, 0) and math.fmod(1, 0.0) ~= math.fmod(1, 0.0))
assert(tostring(0/0):find("nan") and tostring(-0.0) == "-0.0")
local t = {}
t[2^53] = 1; t[-0.0] = 2; t[1e308 * 10] = 3
assert(t[0] == 2 and not pcall(function() t[0/0] = 1 end))
for i = ma - 2, ma do end
for i = mi + 2, mi, -1 do end
for i = 1, 1e300, 1e299 do end
assert(not pcall(function() for i = 1, 10, 0 do end end))
assert(math.ult(mi, ma) == false and math.random(mi, ma) and math.random(0) and string.format("%a %g %.99f", mi, 0/0, 1e308))
assert(("%5.1s|%-5d|%+.3e"):format("abc", 42, 1/0))
assert(tonumber("0x" .. ("f"):rep(100)) and tonumber("1e99999") == math.huge and tonumber("9" .. ("9"):rep(400)))
print("arith edges ok")
