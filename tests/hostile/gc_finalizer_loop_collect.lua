-- expect: limit=fuel
-- limits: fuel=50000000
-- why: a finalizer that loops forever, run by an explicit collectgarbage() in the middle of the script
do setmetatable({}, { __gc = function() while true do end end }) end
collectgarbage()
print("not reached")
