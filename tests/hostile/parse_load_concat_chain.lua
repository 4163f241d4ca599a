-- expect: error=C stack overflow
-- why: a right-associative chain of 200k '..' and '^' operators recurses once per operator
local f, err = load("return a" .. string.rep(" .. a ^ a", 100000))
assert(f == nil)
error(err, 0)
