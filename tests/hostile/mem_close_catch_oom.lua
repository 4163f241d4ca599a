-- expect: limit=memory
-- limits: memory_mib=16
-- why: a __close handler that drops the hog and tries to replace the OOM error with a normal return
local hog = {}
local block = string.rep("c", 4096)
local function bomb()
  local guard <close> = setmetatable({}, { __close = function() hog = nil; collectgarbage() end })
  while true do hog[#hog + 1] = block .. #hog end
end
print(pcall(bomb))
