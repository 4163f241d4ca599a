-- expect: limit=fuel
-- limits: fuel=100000000
-- why: nested greedy captures with a failing anchor re-scan the subject quadratically (and more) in string.match
local s = string.rep("ab", 20000)
print(string.match(s, "(.*)(.*)(.*)c"))
