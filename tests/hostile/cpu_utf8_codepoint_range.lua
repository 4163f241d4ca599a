-- expect: error=string slice too long
-- why: utf8.codepoint over a whole million-codepoint string would push millions of results; must be refused
local s = "\u{20AC}"
for i = 1, 20 do s = s .. s end -- 2^20 codepoints (3 MiB), above the 1M-slot stack limit
print(select("#", utf8.codepoint(s, 1, -1)))
