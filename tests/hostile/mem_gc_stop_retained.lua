-- expect: limit=memory
-- limits: memory_mib=8 fuel=1000000000
-- why: collectgarbage("stop") then allocate and keep everything
collectgarbage("stop")
local keep = {}
while true do keep[#keep + 1] = { #keep } end
