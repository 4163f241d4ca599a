-- expect: completed
-- why: io and every process/file/environment function of os must be absent, by name and through _G and _ENV
assert(io == nil and _G.io == nil and _ENV.io == nil and rawget(_G, "io") == nil)
for _, name in ipairs({ "execute", "getenv", "exit", "remove", "rename", "tmpname", "setlocale" }) do
  assert(os[name] == nil, "os." .. name .. " is reachable")
end
local keys = {}
for k in pairs(os) do keys[#keys + 1] = k end
table.sort(keys)
assert(table.concat(keys, ",") == "clock,date,difftime,time", table.concat(keys, ","))
assert(getmetatable(os) == nil)
print("io/os: refused")
