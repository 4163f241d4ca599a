-- expect: completed
-- why: dofile and loadfile must be absent, also from a fresh load()ed chunk and a chunk with its own env
assert(dofile == nil and loadfile == nil)
assert(load("return dofile, loadfile, io")() == nil)
local env = setmetatable({}, { __index = _G })
assert(load("return dofile", "=x", "t", env)() == nil)
print(pcall(load, nil))
local f, err = load("/etc/passwd")
assert(f == nil)
print("dofile/loadfile: refused")
