-- expect: completed
-- why: without grants, io can open nothing and os.getenv sees nothing; no process or file-changing function of io or os exists
for _, name in ipairs({ "popen", "tmpfile", "output", "input" }) do
  assert(io[name] == nil, "io." .. name .. " is reachable")
end
for _, path in ipairs({ "/etc/passwd", "../../etc/passwd", "x.txt", "/proc/self/environ", "" }) do
  local f, err = io.open(path)
  assert(f == nil and type(err) == "string", path)
  assert(select(2, io.open(path, "w")) ~= nil)
end
for _, name in ipairs({ "execute", "exit", "remove", "rename", "tmpname", "setlocale" }) do
  assert(os[name] == nil, "os." .. name .. " is reachable")
end
for _, name in ipairs({ "PATH", "HOME", "MOONWALL_CACHE_DIR", "USER" }) do
  assert(os.getenv(name) == nil, name)
end
local keys = {}
for k in pairs(os) do keys[#keys + 1] = k end
table.sort(keys)
assert(table.concat(keys, ",") == "clock,date,difftime,getenv,time", table.concat(keys, ","))
assert(getmetatable(os) == nil)
print("io/os: nothing granted, nothing reached")
