-- expect: completed
-- why: each finalizer creates a fresh finalizable object; lua_close must not finalize new objects forever
local count = 0
local function spawn()
  setmetatable({}, { __gc = function() count = count + 1; spawn() end })
end
spawn()
for i = 1, 5 do collectgarbage() end
assert(count >= 5, "finalizers ran during collections")
print("chain length so far", count)
