-- expect: error=C stack overflow
-- why: a gsub callback that calls gsub on its own match: C -> Lua -> C recursion
local function expand(s) return (s:gsub(".", expand)) end
print(expand("abc"))
