-- expect: limit=memory
-- limits: memory_mib=8 fuel=1000000000
-- why: a memory bomb whose xpcall handler tries to free memory and report success
local hog = {}
local ok, err = xpcall(function()
  while true do hog[#hog + 1] = {} end
end, function(e) hog = nil; collectgarbage(); return "recovered: " .. tostring(e) end)
print(ok, err)
