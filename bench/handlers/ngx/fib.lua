-- fib: CPU-bound work, a recursive fib(25) (242,785 calls) on every request.
local function fib(n)
  if n < 2 then
    return n
  end
  return fib(n - 1) + fib(n - 2)
end
ngx.say(fib(25))
