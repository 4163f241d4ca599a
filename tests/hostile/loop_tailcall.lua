-- expect: limit=fuel
-- limits: fuel=50000000
-- why: proper tail calls never grow the stack, so tail recursion runs forever
local function f(n) return f(n + 1) end
return f(0)
