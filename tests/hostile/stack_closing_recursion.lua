-- expect: error=stack overflow
-- limits: memory_mib=64 fuel=1000000000
-- why: every frame (wide, ~50 slots) holds a to-be-closed variable; the overflow must unwind through thousands of __close calls
local closes = 0
local mt = { __close = function() closes = closes + 1 end }
local function f(n)
  local c <close> = setmetatable({}, mt)
  local a1, a2, a3, a4, a5, a6, a7, a8, a9, a10 = n, n, n, n, n, n, n, n, n, n
  local b = { f(n + 1, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10,
                      a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10) }
  return b
end
f(1)
