-- expect: limit=memory
-- limits: memory_mib=16
-- why: a finalizer that allocates without bound at lua_close; the memory cap must still hold after the script ends
_G.hog = {}
setmetatable({}, { __gc = function() local s = "x" while true do s = s .. s; hog[#hog + 1] = s end end })
print("main chunk done")
