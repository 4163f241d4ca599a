-- expect: error=C stack overflow
-- why: table.concat over a proxy whose __index calls table.concat on another proxy (C buffers live at every level)
local function proxy(depth)
  return setmetatable({}, { __index = function(_, i) return table.concat(proxy(depth + 1), ",", 1, 2) end })
end
print(table.concat(proxy(1), ",", 1, 2))
