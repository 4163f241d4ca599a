-- expect: limit=output
-- limits: output_kib=4
-- why: warnings go to stderr but count against the same output cap
warn("@on")
while true do warn("warning ", "flood") end
