-- expect: limit=memory
-- limits: memory_mib=8 fuel=1000000000
-- why: switch to the generational collector, then mix garbage with retained data until memory runs out
collectgarbage("generational")
local keep = {}
local block = string.rep("g", 1000)
while true do
  local garbage = { block .. #keep }
  keep[#keep + 1] = block .. "kept" .. #keep
end
