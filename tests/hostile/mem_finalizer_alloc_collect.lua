-- expect: limit=memory
-- limits: memory_mib=8 fuel=1000000000
-- why: a finalizer that allocates without bound, run by collectgarbage()
do setmetatable({}, { __gc = function() local t = {} while true do t[#t + 1] = {} end end }) end
collectgarbage()
print("not reached")
