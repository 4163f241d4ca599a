-- expect: error=reader function must return a string
-- why: a reader returning a table (or a number with a __tostring) mid-parse must be rejected cleanly
local n = 0
local f, err = load(function() n = n + 1; if n == 1 then return "return " end return {} end)
assert(f == nil)
error(err, 0)
