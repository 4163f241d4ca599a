-- expect: limit=memory
-- limits: memory_mib=8 fuel=1000000000
-- why: table.move of a billion elements from a proxy that invents values, into a real table
local source = setmetatable({}, { __index = function(_, i) return i end })
local dest = {}
table.move(source, 1, 1e9, 1, dest)
