-- expect: limit=fuel
-- limits: fuel=100000000
-- why: a reader function that supplies valid statements forever: compiling never finishes
local f = load(function() return "x = 1 " end)
print("compiled an infinite chunk?", f)
