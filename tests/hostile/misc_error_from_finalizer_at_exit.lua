-- expect: error=main error
-- why: a script that errors while finalizers that also error are pending at lua_close: the first error must be what is reported
setmetatable({}, { __gc = function() error("finalizer error at close") end })
setmetatable({}, { __gc = function() local t = {} for i = 1, 1000 do t[i] = i end end })
error("main error")
