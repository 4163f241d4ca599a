-- expect: error=invalid option
-- why: every collectgarbage option with odd arguments must be harmless; an unknown option is a plain Lua error
for _, opt in ipairs({ "collect", "count", "step", "isrunning", "incremental", "generational", "incremental" }) do
  assert(pcall(collectgarbage, opt, 2^53, -1, math.huge) ~= nil)
end
collectgarbage("restart")
assert(not pcall(collectgarbage, "step", "lots"))
collectgarbage("setregistry")
