-- expect: error=(error object is a table value)
-- why: an error object whose __tostring returns a non-string must not confuse the host's message handler
error(setmetatable({}, { __tostring = function() return 42 end }))
