-- expect: limit=fuel
-- limits: fuel=50000000
-- why: an infinite generator consumed by an infinite loop, crossing a coroutine boundary each step
local gen = coroutine.wrap(function() local i = 0 while true do i = i + 1 coroutine.yield(i) end end)
while true do gen() end
