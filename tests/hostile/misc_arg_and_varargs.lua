-- expect: completed
-- why: the script's arg table and ... must be plain data with nothing from the host beyond the script's own name
assert(type(arg) == "table" and type(arg[0]) == "string" and arg[1] == nil and arg[-1] == nil)
assert(select("#", ...) == 0)
for k, v in pairs(arg) do assert(type(k) == "number" and type(v) == "string") end
arg[0] = nil
print("args ok")
