-- expect: error=C stack overflow
-- why: an __index function that indexes its own table re-enters the VM from C at every level
local t = setmetatable({}, {})
getmetatable(t).__index = function(self, k) return self[k .. "x"] end
return t.a
