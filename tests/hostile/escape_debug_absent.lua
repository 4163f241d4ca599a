-- expect: completed
-- why: only debug.traceback may exist: no getinfo/sethook/getregistry/getupvalue/setupvalue/getlocal/setmetatable/upvaluejoin
local keys = {}
for k in pairs(debug) do keys[#keys + 1] = k end
assert(#keys == 1 and keys[1] == "traceback", table.concat(keys, ","))
for _, name in ipairs({ "getinfo", "sethook", "gethook", "getregistry", "getupvalue", "setupvalue", "getlocal",
    "setlocal", "setmetatable", "getmetatable", "upvalueid", "upvaluejoin", "setuservalue", "setcstacklimit", "debug" }) do
  assert(debug[name] == nil, name)
end
assert(type(debug.traceback("x")) == "string")
print("debug: only traceback")
