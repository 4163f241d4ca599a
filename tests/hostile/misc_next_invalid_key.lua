-- expect: error=invalid key to 'next'
-- why: next() with a key that is not in the table must be a clean error (no out-of-bounds scan)
local t = { a = 1, b = 2 }
print(next(t, "zzz"))
