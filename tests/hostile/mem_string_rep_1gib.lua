-- expect: limit=memory
-- limits: memory_mib=16
-- why: one string.rep asking for 1.5 GiB in a single allocation, far above the cap
local s = string.rep("x", 3 * 2^29)
print(#s)
