-- expect: limit=fuel
-- limits: fuel=100000000 memory_mib=32
-- why: building a string by repeated s = s .. x is quadratic copying with garbage churn
local s = ""
for i = 1, 1e7 do s = s .. "x"; if #s > 1000000 then s = "" end end
