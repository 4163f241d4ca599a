-- expect: limit=fuel
-- limits: fuel=50000000
-- why: a runaway loop inside a string.gsub replacement callback (C calling Lua)
string.gsub("abc", "%w", function(c) while true do end end)
