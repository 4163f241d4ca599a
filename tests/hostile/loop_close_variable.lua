-- expect: limit=fuel
-- limits: fuel=50000000
-- why: a to-be-closed variable whose __close handler loops forever when the block exits
do
  local guard <close> = setmetatable({}, { __close = function() while true do end end })
end
print("not reached")
