-- expect: limit=output
-- limits: output_kib=1
-- why: 1025 bytes of output with a 1 KiB cap: one byte over must stop the run
print(string.rep("a", 1023))
print("")
