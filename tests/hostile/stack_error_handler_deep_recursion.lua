-- expect: limit=memory
-- limits: memory_mib=16 fuel=1000000000
-- why: a message handler that recurses without bound in Lua is re-invoked on its own overflow; memory must end it
local ok, err = xpcall(function() error("first") end, function(m) local function r() return 1 + r() end return r() end)
print("handler recursion returned:", ok, err)
