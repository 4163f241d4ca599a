-- Prelude for running the official Lua 5.4 test files under `moonwall exec`.
--
-- The sandbox has no 'package' library and no 'require' (on purpose: no
-- file system).  A few test files load helper modules that ship with the
-- test suite ('bwcoercion', 'tracegc'), a standard library ('utf8'), or a
-- module they define themselves through 'package.preload' ('bit32').
-- This chunk provides a minimal 'package'/'require' that follows the
-- semantics of the real 'require' (package.loaded, then package.preload,
-- then a source searcher) but reads module sources from a table handed
-- over by run.sh instead of from files.
--
-- run.sh defines the global _MOONWALL_SUITE_SOURCES = { [name] = source }
-- in an earlier -e chunk; this chunk takes it and removes the global.
-- No other global besides 'package' and 'require' is added.

local sources = _MOONWALL_SUITE_SOURCES or {}
_MOONWALL_SUITE_SOURCES = nil

local load, error, type, setmetatable, _G = load, error, type, setmetatable, _G

-- 'tracegc.lua' captures 'io.stderr' and writes a '.' to it from a
-- finalizer as a progress mark.  The sandbox has no 'io'; helper modules
-- are therefore loaded in an environment where only 'io.stderr:write' exists,
-- as a no-op.  Everything else is the real global table (reads and writes).
local stderr = { write = function (self) return self end }
local modenv = setmetatable({}, {
  __index = function (_, k)
    if k == "io" and _G.io == nil then return { stderr = stderr } end
    return _G[k]
  end,
  __newindex = _G,
})

package = {
  loaded = {
    _G = _G, coroutine = coroutine, debug = debug, math = math, os = os,
    string = string, table = table, utf8 = utf8,
  },
  preload = {},
}
package.loaded.package = package

local function sourcesearcher (name)
  local src = sources[name]
  if src == nil then
    return "\n\tno file './" .. name .. ".lua'"
  end
  local filename = "./" .. name .. ".lua"
  local f, msg = load(src, "@" .. filename, "t", modenv)
  if not f then
    error("error loading module '" .. name .. "' from file '" .. filename ..
          "':\n\t" .. msg, 3)
  end
  return f, filename
end

function require (name)
  local loaded = package.loaded
  if loaded[name] then return loaded[name] end
  local loader, extra
  local pre = package.preload[name]
  if pre then
    loader, extra = pre, ":preload:"
  else
    local res, fname = sourcesearcher(name)
    if type(res) ~= "function" then
      error("module '" .. name .. "' not found:\n\tno field package.preload['"
            .. name .. "']" .. res, 2)
    end
    loader, extra = res, fname
  end
  local r = loader(name, extra)
  if r ~= nil then
    loaded[name] = r
  elseif loaded[name] == nil then
    loaded[name] = true
  end
  return loaded[name], extra
end
