-- expect: limit=memory
-- limits: memory_mib=16
-- why: one string.rep asking for just under 2 GiB at once (inside Lua's own size checks), wrapped in pcall
print(pcall(string.rep, "x", 2^31 - 1000))
print("survived a 2 GiB allocation failure")
