-- expect: error=C stack overflow
-- why: load() of 100k nested table constructors
local n = 100000
local f, err = load("return " .. string.rep("{", n) .. string.rep("}", n))
assert(f == nil)
error(err, 0)
