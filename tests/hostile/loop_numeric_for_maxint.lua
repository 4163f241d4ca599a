-- expect: limit=fuel
-- limits: fuel=50000000
-- why: an integer for loop up to math.maxinteger is effectively infinite
local s = 0
for i = 1, math.maxinteger do s = s + i end
