-- expect: limit=memory
-- limits: memory_mib=8 fuel=1000000000
-- why: unbounded closures each capturing fresh upvalues
local keep = {}
local n = 0
while true do
  n = n + 1
  local a, b, c = n, n * 2, tostring(n)
  keep[n] = function() return a, b, c end
end
