-- expect: error=C stack overflow
-- why: load() of 100k chained unary operators (- not ~ #) recursing in the expression parser
local f, err = load("return " .. string.rep("- not ~ #", 25000) .. "x")
assert(f == nil)
error(err, 0)
