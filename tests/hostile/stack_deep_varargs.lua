-- expect: error=stack overflow
-- limits: memory_mib=64 fuel=1000000000
-- why: a vararg call with about a million arguments (table.unpack right at the stack limit, then recursion)
local t = {}
for i = 1, 990000 do t[i] = i end
local function f(...) return select("#", ...) + f(...) end
print(f(table.unpack(t)))
