-- expect: limit=fuel
-- limits: fuel=50000000
-- why: an __le metamethod that never returns, triggered by <=
local mt = { __le = function() while true do end end }
return setmetatable({}, mt) <= setmetatable({}, mt)
