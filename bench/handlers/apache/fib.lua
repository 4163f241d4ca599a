-- fib for Apache mod_lua: a recursive fib(25) on every request.
local function fib(n)
  if n < 2 then
    return n
  end
  return fib(n - 1) + fib(n - 2)
end

function handle(r)
  r.content_type = "text/plain"
  r:puts(fib(25), "\n")
  return apache2.OK
end
