-- expect: limit=memory
-- limits: memory_mib=16
-- why: a memory bomb inside pcall: the out-of-memory must end the run, not be caught and survived
local block = string.rep("m", 4096)
local ok, err = pcall(function()
  local t = {}
  while true do t[#t + 1] = block .. #t end
end)
print("caught the OOM and kept going:", ok, err)
