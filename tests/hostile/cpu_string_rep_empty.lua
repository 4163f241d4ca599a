-- expect: limit=fuel
-- limits: fuel=100000000
-- why: string.rep of the empty string a quadrillion times allocates nothing but loops in C (known Lua CPU bomb)
local s = string.rep("", 1e15)
print(#s)
