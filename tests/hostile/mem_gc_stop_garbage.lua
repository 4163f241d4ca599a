-- expect: completed
-- limits: memory_mib=8 fuel=1000000000
-- why: collectgarbage("stop") then churn 64 MB of garbage: the emergency collector must still reclaim it
collectgarbage("stop")
local kib = string.rep("k", 1024)
for i = 1, 64 do local s = string.rep(kib, 1024, tostring(i)) end
print(collectgarbage("isrunning"))
