-- expect: error=cannot resume dead coroutine
-- why: resuming dead/running coroutines, wrapping errors, closing with pending __close, all through the coroutine API
local co = coroutine.create(function() return 1 end)
assert(coroutine.resume(co))
assert(not coroutine.resume(co))
local self_resume = coroutine.create(function() return coroutine.resume(coroutine.running()) end)
local ok, inner_ok, msg = coroutine.resume(self_resume)
assert(ok and not inner_ok and msg:find("non%-suspended"))
local closed = false
local pending = coroutine.create(function()
  local c <close> = setmetatable({}, { __close = function() closed = true; error("close failed") end })
  coroutine.yield()
end)
coroutine.resume(pending)
local cok, cerr = coroutine.close(pending)
assert(closed and not cok and tostring(cerr):find("close failed"))
local w = coroutine.wrap(function() return 1 end)
w()
w()
