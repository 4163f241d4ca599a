-- expect: limit=output
-- limits: output_kib=2
-- why: every byte value, invalid UTF-8 and terminal escapes printed over and over: bytes pass through and are counted
local all = {}
for b = 0, 255 do all[#all + 1] = string.char(b) end
local s = table.concat(all) .. "\27]0;pwned\7\27[2J\xC0\x80\xED\xA0\x80"
while true do print(s) end
