-- expect: error=C stack overflow
-- why: a chunk that compiles its own source and runs it under pcall from inside itself (load -> pcall -> load ...)
local src = "local src = ... ; local ok, e = pcall(assert(load(src)), src) ; error(e, 0)"
assert(load(src))(src)
