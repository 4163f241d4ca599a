-- expect: completed
-- limits: output_kib=1
-- why: exactly 1024 bytes of output with a 1 KiB cap must be allowed (the cap is inclusive, not off by one)
print(string.rep("a", 1023))
