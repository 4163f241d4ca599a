-- expect: error=stack overflow
-- limits: memory_mib=64 fuel=2000000000
-- why: plain non-tail Lua recursion must hit Lua's own stack limit (1M slots, ~40 MB) and raise an error
local function f(n) return 1 + f(n + 1) end
print(f(1))
