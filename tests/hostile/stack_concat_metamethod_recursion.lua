-- expect: error=C stack overflow
-- why: __concat that concatenates its own operand again, nesting metamethod calls
local mt = {}
mt.__concat = function(a, b) return a .. b end
print(setmetatable({}, mt) .. "x")
