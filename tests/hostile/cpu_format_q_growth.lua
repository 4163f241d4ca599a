-- expect: limit=fuel
-- limits: fuel=100000000
-- why: repeatedly quoting a string with %q roughly doubles it (escaped quotes/backslashes) each round
local s = '"\\'
while true do s = string.format("%q", s) end
