-- expect: error=pattern too complex
-- why: a pattern of thousands of optional items recurses once per item; Lua's pattern depth cap must stop it
local s = string.rep("a", 5000)
print(string.find(s, string.rep("a?", 5000) .. string.rep("a", 5000)))
