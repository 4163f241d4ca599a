-- expect: limit=fuel
-- limits: fuel=100000000
-- why: a catastrophic backtracking pattern (several lazy .- against a string with no match) is polynomial work inside C
local s = string.rep("a", 20000)
print(string.find(s, ".-.-.-.-b"))
