-- expect: limit=memory
-- limits: memory_mib=16
-- why: a memory bomb inside a coroutine; resume returning false would let the script survive the OOM
local co = coroutine.create(function()
  local s = { "x" }
  while true do s[#s + 1] = table.concat(s) end
end)
local ok, err = coroutine.resume(co)
print("resume returned:", ok, err)
while true do end
