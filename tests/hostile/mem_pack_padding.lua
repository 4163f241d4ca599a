-- expect: limit=memory
-- limits: memory_mib=4
-- why: string.pack with a fixed-size string field of 2 billion bytes pads it out byte by byte in C
print(#string.pack("c2000000000", "x"))
