-- expect: error=string.dump is not available
-- why: string.dump must refuse to produce bytecode, via the library and via the string metatable
local ok, err = pcall(string.dump, print)
assert(not ok)
ok, err = pcall(function() return ("").dump(function() end) end)
assert(not ok)
print("string.dump refused:", err)
string.dump(function() return 1 end)
