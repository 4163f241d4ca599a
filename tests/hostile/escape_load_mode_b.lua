-- expect: error=binary chunks are not allowed
-- why: asking load for binary-only mode (or a bogus mode) must never switch the loader into binary mode
assert(load("return 1", "=x", "b") == nil)
assert(load("return 1", "=x", "xyz") == nil)
assert(load("return 1", "=x", 98) == nil)
assert(load("return 1", "=x", "t")() == 1)
local f, err = load("return 1", "=x", "b")
error(err, 0)
