-- expect: error=C stack overflow
-- why: __tostring calling tostring on itself: recursion through the C function tostring
local obj = setmetatable({}, {})
getmetatable(obj).__tostring = function(self) return "<" .. tostring(self) .. ">" end
print(obj)
