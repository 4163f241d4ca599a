-- expect: limit=fuel
-- limits: fuel=50000000
-- why: mutual tail recursion through a table of functions (and a vararg) loops forever
local M = {}
function M.ping(...) return M.pong(select("#", ...), ...) end
function M.pong(n, ...) return M.ping(...) end
return M.ping(1, 2, 3)
