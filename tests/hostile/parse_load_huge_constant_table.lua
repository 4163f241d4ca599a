-- expect: limit=memory
-- limits: memory_mib=16 fuel=1000000000
-- why: compiling a constructor with a million distinct constants makes the parser allocate without bound
local parts = {}
for i = 1, 1000000 do parts[i] = i + 0.5 end
local src = "return {" .. table.concat(parts, ",") .. "}"
print(#src, load(src))
