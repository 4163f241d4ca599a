-- expect: completed
-- limits: fuel=1000000000
-- why: extreme collector parameters (zero pause, huge step multipliers, mode switching) must not break the VM
collectgarbage("incremental", 0, 1000, 0)
local keep = {}
for i = 1, 2000 do keep[i % 100] = { i } end
collectgarbage("generational", 0, 100)
for i = 1, 2000 do keep[i % 100] = tostring(i) end
collectgarbage("incremental", 1000, 0, 63)
assert(type(collectgarbage("step", math.maxinteger)) == "boolean")
collectgarbage("step", -1)
collectgarbage("setpause", 0); collectgarbage("setstepmul", 1e9)
for i = 1, 2000 do keep[i % 100] = { i } end
assert(collectgarbage("isrunning"))
collectgarbage("stop"); assert(not collectgarbage("isrunning")); collectgarbage("restart")
print(collectgarbage("count") > 0)
