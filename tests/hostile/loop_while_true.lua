-- expect: limit=fuel
-- limits: fuel=50000000
-- why: the simplest runaway: an empty while-true loop must be stopped by fuel
while true do end
