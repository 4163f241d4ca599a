-- expect: limit=output
-- limits: output_kib=4
-- why: a finalizer that prints forever at lua_close, after the script returned
setmetatable({}, { __gc = function() while true do print("still here") end end })
