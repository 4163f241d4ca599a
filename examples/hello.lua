-- A first script for `moonwall exec`: ordinary Lua 5.4, run in a fresh,
-- limited sandbox. Try `moonwall exec --stats examples/hello.lua`.

local function fib(n)
  if n < 2 then return n end
  return fib(n - 1) + fib(n - 2)
end

print(("hello from %s in the moonwall sandbox"):format(_VERSION))
print("fib(25) = " .. fib(25))

-- What a script cannot reach: there is no io, no package, no os.execute.
print("io:", io, "package:", package, "os.execute:", os.execute)

-- Errors are ordinary Lua errors...
print(pcall(error, "caught as usual"))

-- ...but limits are not: this loop would be stopped by the fuel limit, and
-- no pcall could catch it. Uncomment to see `error: fuel limit of ... exhausted`.
-- while true do end
