-- expect: limit=memory
-- limits: memory_mib=16
-- why: table.concat with a 1 MB separator between 1000 items asks for a 1 GB result
local items = {}
for i = 1, 1000 do items[i] = i end
print(#table.concat(items, string.rep("-", 1024 * 1024)))
