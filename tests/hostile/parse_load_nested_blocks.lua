-- expect: error=C stack overflow
-- why: load() of 50k nested do-blocks / if-blocks / while-blocks
local n = 50000
local f, err = load(string.rep("do if true then while false do ", n) .. string.rep("end end end ", n))
assert(f == nil)
error(err, 0)
