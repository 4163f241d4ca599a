-- expect: limit=fuel
-- limits: fuel=50000000
-- why: an __eq metamethod that never returns, triggered by ==
local mt = { __eq = function(a, b) while true do end end }
local a, b = setmetatable({}, mt), setmetatable({}, mt)
print(a == b)
