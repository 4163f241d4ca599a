-- expect: error='__newindex' chain too long; possible loop
-- why: a __newindex cycle between two tables must be detected
local a, b = {}, {}
setmetatable(a, { __newindex = b })
setmetatable(b, { __newindex = a })
a.x = 1
