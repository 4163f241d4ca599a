-- expect: limit=fuel
-- limits: fuel=50000000
-- why: repeat ... until false with a little arithmetic in the body never ends
local x = 0
repeat x = (x + 1) % 7 until false
