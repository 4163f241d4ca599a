-- expect: limit=memory
-- limits: memory_mib=16
-- why: doubling a string until it no longer fits
local s = "x"
while true do s = s .. s end
