-- expect: limit=fuel
-- limits: fuel=50000000
-- why: ipairs over a proxy whose __index answers every integer never finds the end
local proxy = setmetatable({}, { __index = function(_, i) return i end })
for i, v in ipairs(proxy) do end
