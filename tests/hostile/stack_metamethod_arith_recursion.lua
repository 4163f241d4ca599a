-- expect: error=C stack overflow
-- why: __add calls __unm calls __add...: each metamethod call re-enters the VM from C, so Lua's C-call cap must stop it
local mt = {}
mt.__add = function(a, b) return -a end
mt.__unm = function(a) return a + a end
local v = setmetatable({}, mt)
return v + 1
