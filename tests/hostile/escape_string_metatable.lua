-- expect: completed
-- why: tampering with the shared string metatable works only inside this run and cannot reach anything new
local smt = getmetatable("")
assert(type(smt) == "table" and smt.__index == string)
smt.__index = function(s, k) return function() return "hijacked " .. k end end
assert(("x"):upper() == "hijacked upper")
smt.__index = string
smt.__metatable = "locked"
assert(getmetatable("") == "locked")
assert(not pcall(setmetatable, "", {}))
string.rep = nil
assert(("a").rep == nil)
print("string metatable tampering stays local")
