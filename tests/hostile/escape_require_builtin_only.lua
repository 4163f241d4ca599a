-- expect: completed
-- why: package, require, and the loaders/C-library paths behind them must not exist anywhere reachable
assert(package == nil and require == nil)
assert(rawget(_G, "package") == nil and rawget(_G, "require") == nil)
local ok, err = pcall(function() return require("os") end)
assert(not ok and err:find("global 'require'"), err)
for _, lib in ipairs({ string, table, math, utf8, coroutine, os, debug }) do
  for k, v in pairs(lib) do assert(k ~= "loadlib" and k ~= "searchpath" and k ~= "cpath" and k ~= "preload") end
end
print("package/require: refused")
