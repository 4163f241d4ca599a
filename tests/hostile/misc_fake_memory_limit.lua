-- expect: completed
-- limits: memory_mib=8 fuel=1000000000
-- why: after a growth refusal that the emergency GC recovered from, a scripted "not enough memory" must not pass for the memory limit
collectgarbage("stop")
local block = string.rep("k", 1024)
for i = 1, 8 do local s = string.rep(block, 3 * 1024) end -- 3 MiB of garbage each time, collector stopped
collectgarbage("restart")
assert(collectgarbage("count") < 4096)
local ok, err = pcall(error, "not enough memory", 0)
assert(not ok and err == "not enough memory")
print("recovered from a refused growth; the scripted error was caught")
