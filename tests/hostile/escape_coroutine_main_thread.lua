-- expect: error=cannot close a running coroutine
-- why: poking the main thread with coroutine functions (yield from main, resume/close main) must be refused
local main, ismain = coroutine.running()
assert(ismain)
assert(not coroutine.isyieldable())
assert(not pcall(coroutine.yield, 1))
local ok, err = coroutine.resume(main)
assert(not ok and err:find("non%-suspended"), err)
assert(coroutine.status(main) == "running")
coroutine.close(main)
