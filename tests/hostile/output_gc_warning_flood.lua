-- expect: limit=output
-- limits: output_kib=4
-- why: thousands of failing finalizers, each producing an "error in __gc" warning
warn("@on")
for i = 1, 100000 do setmetatable({}, { __gc = function() error(("x"):rep(200)) end }) end
collectgarbage()
