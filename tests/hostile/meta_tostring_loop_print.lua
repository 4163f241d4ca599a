-- expect: limit=fuel
-- limits: fuel=50000000
-- why: print calls __tostring from C; that metamethod never returns
print(setmetatable({}, { __tostring = function() while true do end end }))
