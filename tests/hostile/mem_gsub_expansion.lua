-- expect: limit=memory
-- limits: memory_mib=16 fuel=1000000000
-- why: gsub replacing every byte of a 64 KB string with a 4 KB string: a 256 MB result
local s = string.rep("a", 64 * 1024)
local big = string.rep("b", 4096)
print(#s:gsub(".", big))
