-- expect: completed
-- why: binary content after leading whitespace/comment, or a string with a __tostring, must be treated as text (and fail as text)
local f, err = load(" \27Lua\x54\0")
assert(f == nil and not err:find("binary"), err)
local ok, e = pcall(load, setmetatable({}, { __tostring = function() return "\27Lua" end }))
assert(not ok and e:find("function expected"), "a table is not a chunk")
f = load(123)
print(f, err)
print("text-only loading holds")
