-- expect: limit=fuel
-- limits: fuel=50000000
-- why: a __len metamethod that loops, reached through table.insert (which calls luaL_len)
local t = setmetatable({}, { __len = function() while true do end end })
table.insert(t, "x")
