-- expect: limit=fuel
-- limits: fuel=100000000
-- why: compiling a large generated chunk again and again keeps the parser busy inside one C call each time
local src = string.rep("a = 1 + 2 * 3 ; ", 100000) 
while true do assert(load(src)) end
