-- expect: limit=fuel
-- limits: fuel=100000000
-- why: busy-waiting on os.clock / os.time for an hour: each call goes to the host; fuel must still run out
local start = os.clock()
while os.clock() - start < 3600 do local _ = os.time() end
