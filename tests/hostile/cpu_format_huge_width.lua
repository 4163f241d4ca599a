-- expect: error=invalid conversion
-- why: string.format with a 3-digit width/precision must be rejected, not produce a huge field
print(pcall(string.format, "%99.99f", 1e308))
print(string.format("%1000000d", 1))
