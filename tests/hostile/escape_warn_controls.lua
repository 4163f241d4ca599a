-- expect: completed
-- limits: output_kib=4
-- why: warn control messages and odd arguments must stay inside the run's output budget and not crash the host stream
warn("@off")
warn("hidden")
warn("@on")
warn("visible ", "warning")
warn("@unknown-control")
assert(not pcall(warn))
assert(not pcall(warn, {}))
warn("\0\255\27[2J")
warn("@off")
for i = 1, 100000 do warn("suppressed") end
