-- expect: error=C stack overflow
-- why: each coroutine creates and resumes the next one from inside itself (nested resumes)
local function nest(n)
  local co = coroutine.wrap(function() return nest(n + 1) end)
  return co()
end
print(nest(1))
