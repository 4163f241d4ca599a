-- expect: error=stack overflow
-- why: recursion through pcall nests C calls (lua_pcall inside lua_pcall) until Lua's C-call cap
local function f()
  local ok, err = pcall(f)
  error(err, 0)
end
f()
