-- expect: error=position out of bounds
-- why: table library calls with hostile positions, sizes and overflowing ranges must be Lua errors
local t = { 1, 2, 3 }
assert(not pcall(table.move, t, 1, math.maxinteger, 2))
assert(not pcall(table.move, t, math.mininteger, -1, 1))
assert(not pcall(table.move, t, 1, 3, math.maxinteger))
assert(not pcall(table.remove, t, 2^40))
assert(not pcall(table.concat, { 1, {}, 3 }))
assert(table.concat({}, "x", math.maxinteger, math.mininteger) == "")
assert(not pcall(table.concat, {}, "", math.maxinteger - 1, math.maxinteger))
assert(select("#", table.unpack({}, math.maxinteger, math.maxinteger)) == 1)
assert(not pcall(select, -2^40, 1) and not pcall(select, 0, 1))
assert(table.pack(table.unpack({ 1, nil, 3 }, 1, 3)).n == 3)
local p = setmetatable({}, { __len = function() return math.maxinteger end })
pcall(table.insert, p, "x")  -- wraps to mininteger: odd but harmless
table.insert(t, 2^40, "x")
