-- expect: limit=fuel
-- limits: fuel=100000000
-- why: catch a C stack overflow with pcall and provoke it again, forever: each round costs fuel, none is free
local t = setmetatable({}, {})
getmetatable(t).__index = function(self, k) return self[k] end
local rounds = 0
while true do
  local ok, err = pcall(function() return t.x end)
  assert(not ok and err:find("stack overflow"))
  rounds = rounds + 1
end
