-- expect: limit=fuel
-- limits: fuel=50000000
-- why: the runaway loop sits in the xpcall message handler, not in the protected function
xpcall(function() error("boom") end, function(msg) while true do end end)
print("handler returned")
