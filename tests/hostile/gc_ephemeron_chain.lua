-- expect: limit=fuel
-- limits: fuel=100000000
-- why: one collectgarbage() over a long ephemeron chain built back-to-front is quadratic work inside the collector
local weak = setmetatable({}, { __mode = "k" })
local keys = {}
for i = 1, 30000 do keys[i] = {} end
for i = 30000, 2, -1 do weak[keys[i - 1]] = keys[i] end
local root = keys[1]
keys = nil
collectgarbage()
print("collector finished", root ~= nil)
