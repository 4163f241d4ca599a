-- expect: completed
-- why: errors raised in finalizers (during collect and at exit) become warnings, never crash or escape
for i = 1, 100 do setmetatable({}, { __gc = function() error("finalizer " .. i) end }) end
collectgarbage()
setmetatable({}, { __gc = function() error(setmetatable({}, { __tostring = function() while false do end return "obj" end })) end })
print("still running")
