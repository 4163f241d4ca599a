-- expect: limit=output
-- limits: output_kib=4
-- why: the output limit must not be catchable by pcall around the flood
local ok, err = pcall(function() while true do print(("z"):rep(100)) end end)
print("survived the output limit", ok, err)
while true do end
