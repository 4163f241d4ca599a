-- expect: limit=fuel
-- limits: fuel=50000000
-- why: table.sort without a comparator uses __lt, which loops forever
local mt = { __lt = function(a, b) while true do end end }
local t = {}
for i = 1, 50 do t[i] = setmetatable({}, mt) end
table.sort(t)
