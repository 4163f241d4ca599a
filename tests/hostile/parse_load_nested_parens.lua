-- expect: error=C stack overflow
-- why: load() of 100k nested parentheses must fail at the parser's nesting cap and return nil + message
local n = 100000
local f, err = load("return " .. string.rep("(", n) .. "1" .. string.rep(")", n))
assert(f == nil)
error(err, 0)
