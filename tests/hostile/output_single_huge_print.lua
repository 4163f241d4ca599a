-- expect: limit=output
-- limits: output_kib=4
-- why: one print of a 1 MB string: a single write far above the cap
print(string.rep("y", 1024 * 1024))
