-- expect: limit=fuel
-- limits: fuel=50000000
-- why: an __concat metamethod that never returns, hidden in the middle of a concat chain
local odd = setmetatable({}, { __concat = function() while true do end end })
local s = "a" .. "b" .. odd .. "c"
