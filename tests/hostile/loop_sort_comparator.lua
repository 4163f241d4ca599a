-- expect: limit=fuel
-- limits: fuel=50000000
-- why: a table.sort comparator that never returns
local t = {}
for i = 1, 100 do t[i] = (i * 37) % 101 end
table.sort(t, function(a, b) while true do end end)
