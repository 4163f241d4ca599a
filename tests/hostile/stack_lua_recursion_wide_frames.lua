-- expect: error=stack overflow
-- limits: memory_mib=64 fuel=1000000000
-- why: recursion with many locals and arguments per frame grows the Lua stack fast
local function f(a, b, c, d, e, g, h, i, j, k, ...)
  local l1, l2, l3, l4, l5, l6, l7, l8 = a, b, c, d, e, g, h, i
  return 1 + f(l1, l2, l3, l4, l5, l6, l7, l8, j, k, ...)
end
f(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16)
