-- expect: limit=fuel
-- limits: fuel=50000000
-- why: an error unwinds through a __close handler that loops (closing during error propagation)
local ok = pcall(function()
  local guard <close> = setmetatable({}, { __close = function(_, err) while true do end end })
  error("unwind")
end)
