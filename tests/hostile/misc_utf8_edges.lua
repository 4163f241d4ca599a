-- expect: completed
-- why: utf8 functions with out-of-range codepoints, huge offsets and malformed input must fail cleanly
assert(#utf8.char(0x7FFFFFFF) == 6 and not pcall(utf8.char, 0x80000000) and not pcall(utf8.char, -1))
assert(utf8.len("\xff") == nil and utf8.len("\xed\xa0\x80") == nil and utf8.len("\xed\xa0\x80", 1, -1, true) == 1)
assert(not pcall(utf8.codepoint, "\xf4\x90\x80\x80"))
assert(not pcall(utf8.len, "abc", 5) and not pcall(utf8.len, "abc", 1, 2^40))
assert(utf8.offset("abc", 2^40) == nil and utf8.offset("abc", -2^40) == nil)
assert(not pcall(utf8.offset, "\x80", 1) and not pcall(utf8.offset, "abc", 1, 2^40))
for p, c in utf8.codes("h\u{10FFFF}i", true) do end
assert(not pcall(function() for p, c in utf8.codes("ab\xff") do end end))
assert(string.match("\u{10FFFF}", utf8.charpattern))
print("utf8 edges ok")
