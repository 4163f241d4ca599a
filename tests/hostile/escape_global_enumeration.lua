-- expect: completed
-- why: walk everything reachable from _G (and the string metatable) and assert only the expected names exist
local allowed = {}
for name in ("_G _VERSION arg assert collectgarbage coroutine debug error getmetatable io ipairs load math next os package pairs pcall print rawequal rawget rawlen rawset require select setmetatable string table tonumber tostring type utf8 warn xpcall"):gmatch("%S+") do allowed[name] = true end
for k, v in pairs(_G) do assert(allowed[k], "unexpected global: " .. tostring(k)) end
local seen, count = {}, 0
local function walk(t, path)
  if seen[t] then return end
  seen[t] = true
  for k, v in pairs(t) do
    count = count + 1
    local kind = type(v)
    assert(kind ~= "userdata" and kind ~= "thread", "host object at " .. path .. "." .. tostring(k))
    if kind == "table" then walk(v, path .. "." .. tostring(k)) end
  end
  local mt = getmetatable(t)
  if type(mt) == "table" then walk(mt, path .. ".<mt>") end
end
walk(_G, "_G")
walk(getmetatable(""), "<string mt>")
print("reachable entries:", count)
