-- expect: completed
-- why: require loads only built-in Lua modules and, with a grant, Lua source from lib_dirs: no C loaders, no search paths, no files without a grant
assert(package.loadlib == nil and package.searchpath == nil and package.cpath == nil and package.searchers == nil)
for _, name in ipairs({ "socket.core", "ffi", "jit", "../../etc/passwd", "/etc/passwd", "lfs", "posix", "io.popen", "" }) do
  local ok, err = pcall(require, name)
  assert(not ok and type(err) == "string" and err:find("not found", 1, true), name .. ": " .. tostring(err))
end
-- a module the script preloads itself is its own code, as in Lua
package.preload["mine"] = function(name) return { name = name } end
assert(require("mine").name == "mine")
assert(require("cjson").encode({ 1 }) == "[1]")
print("require: built-in modules only")
