-- expect: error=array too big
-- why: table.sort on a proxy whose __len claims 2^40 elements must be refused up front, not iterate
local proxy = setmetatable({}, { __len = function() return 2^40 end, __index = function(_, i) return i end })
table.sort(proxy)
