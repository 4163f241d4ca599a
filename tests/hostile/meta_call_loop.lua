-- expect: limit=fuel
-- limits: fuel=50000000
-- why: a callable table whose __call loops, invoked via pcall so a C function calls it
local callable = setmetatable({}, { __call = function(self, ...) while true do end end })
pcall(callable, 1, 2, 3)
