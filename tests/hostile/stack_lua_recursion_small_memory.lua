-- expect: limit=memory
-- limits: memory_mib=16 fuel=1000000000
-- why: the same runaway recursion under a 16 MiB cap: Lua's stack outgrows the cap before LUAI_MAXSTACK, so memory stops it
local function f(n) return 1 + f(n + 1) end
print(f(1))
