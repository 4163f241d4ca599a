-- expect: limit=fuel
-- limits: fuel=100000000
-- why: gmatch with a pattern that matches the empty string everywhere, repeated over a large subject
local s = string.rep("xy", 500000)
while true do for _ in s:gmatch("z*") do end end
