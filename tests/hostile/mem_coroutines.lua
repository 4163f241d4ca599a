-- expect: limit=memory
-- limits: memory_mib=8 fuel=1000000000
-- why: unbounded suspended coroutines, each with its own Lua stack
local keep = {}
while true do
  local co = coroutine.create(function(...) local x = { ... } coroutine.yield(x) end)
  coroutine.resume(co, 1, 2, 3, 4, 5, 6, 7, 8)
  keep[#keep + 1] = co
end
