-- expect: limit=fuel
-- limits: fuel=50000000
-- why: a float for loop to math.huge never terminates
for x = 0.5, math.huge do end
