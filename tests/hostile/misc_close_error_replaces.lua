-- expect: error=close handler error
-- why: a top-level error unwinds through a __close that raises its own error; the run must end with a Lua error, not a fault
local guard <close> = setmetatable({}, { __close = function(_, e) error("close handler error", 0) end })
error("main error")
