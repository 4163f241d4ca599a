-- expect: limit=memory
-- limits: memory_mib=8 fuel=1000000000
-- why: an array that grows without bound
local t = {}
local i = 0
while true do i = i + 1; t[i] = i end
