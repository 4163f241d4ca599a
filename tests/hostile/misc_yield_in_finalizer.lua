-- expect: completed
-- why: finalizers that try to yield (from collectgarbage inside a coroutine, and at exit) must fail as warnings, not fault
warn("@on")
local co = coroutine.wrap(function()
  do setmetatable({}, { __gc = function() coroutine.yield("from __gc") end }) end
  collectgarbage()
  return "finished"
end)
print(co())
setmetatable({}, { __gc = function() coroutine.yield("at exit") end })
