-- expect: completed
-- why: a finalizer re-entering the collector (collectgarbage from __gc) must be refused or harmless
local results = {}
setmetatable({}, { __gc = function()
  results[#results + 1] = collectgarbage()
  results[#results + 1] = collectgarbage("step", 1000)
  results[#results + 1] = collectgarbage("count")
end })
collectgarbage()
collectgarbage()
print("reentrant collect results:", table.unpack(results))
setmetatable({}, { __gc = function() collectgarbage("collect") collectgarbage("stop") end })
