-- expect: completed
-- why: error("not enough memory", 0) is a scripted error (Lua turns it into a memory-error status); like in reference Lua, pcall must catch it
local ok, err = pcall(error, "not enough memory", 0)
assert(not ok and err == "not enough memory")
local co = coroutine.create(function() error("not enough memory", 0) end)
local cok, cerr = coroutine.resume(co)
assert(not cok and cerr == "not enough memory")
print("scripted memory errors are ordinary errors")
