-- expect: error=tostring exploded
-- why: an error object whose __tostring itself raises: the handler must still produce some message
error(setmetatable({}, { __tostring = function() error("tostring exploded", 0) end }))
