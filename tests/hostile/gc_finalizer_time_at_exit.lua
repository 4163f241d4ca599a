-- expect: limit=time
-- limits: fuel=100000000000 timeout_ms=300
-- why: with unlimited fuel, the wall-clock deadline must still stop a looping finalizer run by lua_close
setmetatable({}, { __gc = function() local x = 0 while true do x = x + 1 end end })
print("main chunk done")
