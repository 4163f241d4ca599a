-- expect: limit=fuel
-- limits: fuel=100000000
-- why: sorting a large table with a Lua comparator is a lot of work done from C; fuel must cover it
local t = {}
for i = 1, 300000 do t[i] = (i * 7919) % 300007 end
table.sort(t, function(a, b) return a > b end)
print("sorted")
