-- expect: limit=output
-- limits: output_kib=4
-- why: an uncaught error object whose __tostring floods print; it runs inside the host's message handler
error(setmetatable({}, { __tostring = function() while true do print("from the message handler") end end }))
