-- expect: limit=fuel
-- limits: fuel=50000000
-- why: a finalizer that loops forever runs at lua_close, after the script "completed"; fuel must still apply
setmetatable({}, { __gc = function() while true do end end })
print("main chunk done")
