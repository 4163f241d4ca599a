-- expect: completed
-- why: yields across pcall, metamethods, and C boundaries that cannot yield must resume or fail cleanly
local co = coroutine.wrap(function()
  local ok, v = pcall(function() return coroutine.yield("from pcall") end)
  local t = setmetatable({}, { __index = function(_, k) return coroutine.yield("from __index " .. k) end })
  local w = t.key
  local ok2, err = pcall(table.sort, { 3, 2, 1 }, function(a, b) coroutine.yield("sort") return a < b end)
  assert(not ok2 and err:find("yield across"), err)
  local ok3, err3 = pcall(string.gsub, "a", "a", function() coroutine.yield() end)
  assert(not ok3)
  return "done"
end)
assert(co() == "from pcall")
assert(co(1) == "from __index key")
assert(co("v") == "done")
print("yield boundaries ok")
