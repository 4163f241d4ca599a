-- expect: error=string slice too long
-- why: string.byte(s, 1, -1) on a 2 MB string would push 2 million values onto the Lua stack
local s = "z"
for i = 1, 21 do s = s .. s end -- 2 MiB
print(select("#", s:byte(1, -1)))
