-- expect: limit=fuel
-- limits: fuel=50000000
-- why: two coroutines resuming each other (through the main thread) forever
local a, b
a = coroutine.create(function() while true do coroutine.yield("a") end end)
b = coroutine.wrap(function() while true do coroutine.resume(a); coroutine.yield() end end)
while true do b() end
