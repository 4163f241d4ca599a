-- expect: limit=fuel
-- limits: fuel=50000000
-- why: an __index metamethod that never returns, triggered by an innocent field read
local t = setmetatable({}, { __index = function(t, k) while true do end end })
local _ = t.anything
