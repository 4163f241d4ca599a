-- expect: error=(error object is a nil value)
-- why: raising nil as the error object must still give the host a string message
error(nil)
