-- expect: limit=fuel
-- limits: fuel=50000000
-- why: a looping finalizer reached by the incremental collector while the script merely allocates
for i = 1, 1e7 do
  setmetatable({}, { __gc = function() while true do end end })
  local garbage = { i, i, i, tostring(i) }
end
