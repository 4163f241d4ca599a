-- expect: limit=memory
-- limits: memory_mib=4 fuel=1000000000
-- why: a reader function feeding an endless long string: the lexer buffer grows until memory runs out
local first = true
local chunk = string.rep("x", 65536)
local f, err = load(function()
  if first then first = false return "return [[" end
  return chunk
end)
print(f, err)
