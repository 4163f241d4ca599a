-- expect: completed
-- why: finalizers that resurrect objects into weak tables and globals; the collector must stay consistent
local weak = setmetatable({}, { __mode = "v" })
_G.saved = {}
for i = 1, 1000 do
  local o = setmetatable({ i = i }, { __gc = function(o) saved[#saved + 1] = o; weak[#weak + 1] = o end })
  weak[i] = o
end
collectgarbage(); collectgarbage()
for i = 1, #saved do assert(saved[i].i) end
saved = nil
collectgarbage(); collectgarbage()
print("weak/resurrection ok")
