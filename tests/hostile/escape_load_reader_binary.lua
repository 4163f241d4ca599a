-- expect: error=attempt to load a binary chunk
-- why: a reader function that delivers the binary signature in small pieces must still be refused
local pieces = { "\27", "Lua", "\x54\0", string.rep("\0", 40) }
local i = 0
local f, err = load(function() i = i + 1 return pieces[i] end, "=pieces", "bt")
assert(f == nil)
error(err, 0)
