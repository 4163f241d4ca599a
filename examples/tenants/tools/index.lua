-- The tools tenant: pure computation, its own host name.
local n = tonumber(ngx.var.arg_n) or 20
local function fib(k) if k < 2 then return k end return fib(k - 1) + fib(k - 2) end
ngx.say("fib(", n, ") = ", fib(math.min(n, 27)))
