-- expect: limit=fuel
-- limits: fuel=50000000
-- why: the fuel limit must not be catchable by pcall around the runaway loop
local ok, err = pcall(function() while true do end end)
error("pcall caught the fuel limit: " .. tostring(err))
