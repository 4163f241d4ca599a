-- expect: limit=fuel
-- limits: fuel=50000000
-- why: a __pairs metamethod returning an iterator that never ends
local t = setmetatable({}, { __pairs = function(t) return function(_, k) return (k or 0) + 1, true end, t, nil end })
for k, v in pairs(t) do end
