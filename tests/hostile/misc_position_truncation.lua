-- expect: completed
-- why: string positions above 2^32 wrap around on wasm32 (32-bit size_t, 64-bit Lua integers), as in any 32-bit build of Lua; results must stay inside the string (documented in docs/sandbox.md)
local big = 2^32 + 1
local s = "abcd"
local function inside(sub) return type(sub) == "string" and #sub <= #s and s:find(sub, 1, true) ~= nil end
assert(inside(string.sub(s, big)))
for _, b in ipairs({string.byte(s, big, big + 1)}) do assert(b >= 97 and b <= 100) end
local i, j = string.find(s, "b", big)
assert(i == nil or (i >= 1 and j <= #s))
i, j = string.find(s, "b", big, true)
assert(i == nil or (i >= 1 and j <= #s))
local m = string.match(s, ".", big)
assert(m == nil or inside(m))
for g in string.gmatch(s, ".", big + 1) do assert(inside(g)) end
local ok, v = pcall(string.unpack, "i4", "abcdabcd", big)
assert(not ok or math.type(v) == "integer")
print("positions stay inside the string")
