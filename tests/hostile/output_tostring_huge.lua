-- expect: limit=output
-- limits: output_kib=4
-- why: print of an object whose __tostring returns 100 KB
print(setmetatable({}, { __tostring = function() return ("t"):rep(100000) end }))
