-- expect: error=too many local variables
-- why: a chunk declaring 1000 locals must be refused by the compiler
local names = {}
for i = 1, 1000 do names[i] = "v" .. i end
local f, err = load("local " .. table.concat(names, ", "))
assert(f == nil)
error(err, 0)
