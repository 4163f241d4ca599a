-- expect: error=too many upvalues
-- why: a closure capturing 300 outer locals (through nested functions) must be refused
local parts = {}
for i = 1, 150 do parts[#parts + 1] = ("local a%d = %d"):format(i, i) end
parts[#parts + 1] = "return function() return function() local s = 0"
for i = 1, 150 do parts[#parts + 1] = ("s = s + a%d"):format(i) end
parts[#parts + 1] = "end end"
local inner = table.concat(parts, "\n")
local src = "local " .. (function() local n = {} for i = 1, 150 do n[i] = "b" .. i end return table.concat(n, ",") end)() ..
  "\nreturn function() " .. inner:gsub("s = s %+ a(%d+)", "s = s + a%1 + b%1") .. " end"
local f, err = load(src)
assert(f == nil, "compiled?")
error(err, 0)
