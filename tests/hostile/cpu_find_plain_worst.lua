-- expect: limit=fuel
-- limits: fuel=100000000
-- why: plain string.find with a near-miss needle: memchr/memcmp at every offset is O(n*m) in C
local hay = string.rep("a", 1000000)
local needle = string.rep("a", 5000) .. "b"
print(string.find(hay, needle, 1, true))
