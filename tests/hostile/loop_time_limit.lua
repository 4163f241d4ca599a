-- expect: limit=time
-- limits: fuel=100000000000 timeout_ms=300
-- why: with practically unlimited fuel the wall-clock deadline must stop a busy loop
local x = 0
while true do x = x ~ 1 end
