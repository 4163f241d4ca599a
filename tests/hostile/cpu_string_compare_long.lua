-- expect: limit=fuel
-- limits: fuel=100000000
-- why: comparing two long equal-prefix strings with < scans them in C (strcoll) every time
local a = string.rep("q", 4000000) .. "a"
local b = string.rep("q", 4000000) .. "b"
local n = 0
while true do if a < b then n = n + 1 end end
