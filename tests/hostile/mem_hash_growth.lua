-- expect: limit=memory
-- limits: memory_mib=8 fuel=1000000000
-- why: a hash table with unbounded distinct string keys (string interning + rehashing)
local t = {}
local i = 0
while true do i = i + 1; t["key" .. i] = true end
