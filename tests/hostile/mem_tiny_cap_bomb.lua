-- expect: limit=memory
-- limits: memory_mib=2
-- why: at the smallest allowed cap (2 MiB, barely above the guest's own footprint) a bomb inside pcall must still be the memory limit
print(pcall(function() local t = {} while true do t[#t + 1] = { #t } end end))
print("survived")
