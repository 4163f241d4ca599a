-- expect: limit=fuel
-- limits: fuel=100000000
-- why: utf8.len / utf8.codepoint / utf8.codes over a multi-megabyte string, again and again
local s = string.rep(utf8.char(0x10FFFF, 0x20AC, 0x41), 500000)
while true do
  assert(utf8.len(s) == 1500000)
  for p, c in utf8.codes(s) do end
end
