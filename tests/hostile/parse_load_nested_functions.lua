-- expect: error=C stack overflow
-- why: load() of 10k nested function bodies (each level is a new FuncState on the C stack)
local n = 10000
local f, err = load(string.rep("return function() ", n) .. string.rep("end ", n))
assert(f == nil)
error(err, 0)
