-- expect: error=no such global: socket
-- why: a strict-mode metatable on _G, plus rawset on _ENV: nothing the host owns appears behind the tables
setmetatable(_G, {
  __index = function(_, k) error("no such global: " .. tostring(k), 2) end,
  __newindex = function(t, k, v) rawset(t, k, v) end,
})
rawset(_ENV, "os", nil)
rawset(_ENV, "print", nil)
assert(rawget(_G, "os") == nil)
x = 1
assert(rawget(_G, "x") == 1)
local _ = socket
