-- expect: limit=fuel
-- limits: fuel=50000000
-- why: an __newindex metamethod that never returns, triggered by an assignment
local t = setmetatable({}, { __newindex = function(t, k, v) while true do end end })
t.x = 1
