-- expect: error=C stack overflow
-- why: string.format("%s") calling __tostring which calls string.format again (big C frames with buffers)
local obj = setmetatable({}, {})
getmetatable(obj).__tostring = function(self) return string.format("%s%-40s%q", self, "pad", "x") end
print(string.format("%s", obj))
