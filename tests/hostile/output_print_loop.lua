-- expect: limit=output
-- limits: output_kib=4
-- why: an endless print loop must be cut at the output cap
while true do print("spam spam spam") end
