-- expect: completed
-- why: the sandbox's own debug.traceback must survive hostile arguments: other threads, dead threads, odd levels, non-strings
local co = coroutine.create(function(a) local x = coroutine.yield(a) error("dead") end)
assert(type(debug.traceback(co)) == "string")
coroutine.resume(co, 1)
assert(debug.traceback(co, "suspended", 0):find("suspended"))
coroutine.resume(co)
assert(coroutine.status(co) == "dead")
assert(type(debug.traceback(co, "dead", 5)) == "string")
assert(type(debug.traceback(co, nil, math.maxinteger)) == "string")
assert(type(debug.traceback("m", math.mininteger)) == "string")
assert(type(debug.traceback("m", -1)) == "string")
local tbl = {}
assert(debug.traceback(tbl) == tbl)
assert(debug.traceback(nil) == nil or type(debug.traceback(nil)) == "string")
assert(debug.traceback(12) == "12" or debug.traceback(12):find("12"))
local inner = coroutine.wrap(function() return debug.traceback(coroutine.running(), "self", 1) end)
assert(inner():find("self"))
print("traceback edges ok")
