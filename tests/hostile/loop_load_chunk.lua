-- expect: limit=fuel
-- limits: fuel=50000000
-- why: the runaway loop is compiled at run time by load() from a string
local f = assert(load("local t = {} while true do t[1] = #t end", "=inner"))
f()
