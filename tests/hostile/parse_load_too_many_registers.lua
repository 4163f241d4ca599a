-- expect: error=needs too many registers
-- why: a single call with 300 arguments needs more than 255 registers
local f, err = load("return f(" .. string.rep("1,", 300) .. "1)")
assert(f == nil)
error(err, 0)
