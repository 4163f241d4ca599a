-- expect: completed
-- why: an xpcall message handler that itself errors: Lua must give up with "error in error handling", not recurse forever
local ok, err = xpcall(function() error("first") end, function(m) error("handler failed: " .. tostring(m)) end)
assert(not ok)
print("xpcall result:", err)
assert(err == "error in error handling" or err:find("C stack overflow"), err)
