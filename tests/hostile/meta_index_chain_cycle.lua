-- expect: error='__index' chain too long; possible loop
-- why: two tables whose __index tables point at each other: Lua must detect the cycle, not spin
local a, b = {}, {}
setmetatable(a, { __index = b })
setmetatable(b, { __index = a })
return a.missing
