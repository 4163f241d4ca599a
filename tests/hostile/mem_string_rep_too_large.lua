-- expect: error=resulting string too large
-- why: string.rep beyond Lua's maximum string size must be a Lua error, not an allocation attempt
print(string.rep("abc", 2^40))
