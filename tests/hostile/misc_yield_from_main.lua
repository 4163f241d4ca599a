-- expect: error=attempt to yield from outside a coroutine
-- why: yielding from the main chunk must be a Lua error, not suspend or confuse the host
coroutine.yield("to the host?")
