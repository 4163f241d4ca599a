-- expect: error=C stack overflow
-- why: print calling __tostring that prints another object with the same __tostring (print holds a C buffer per level)
local mt = {}
mt.__tostring = function(self) print(setmetatable({}, mt)) return "x" end
print(setmetatable({}, mt))
