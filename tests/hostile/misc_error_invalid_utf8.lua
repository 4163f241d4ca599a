-- expect: error=bad bytes
-- why: an error message with invalid UTF-8 and NUL bytes must be reported lossily, not crash the host's string handling
error("bad bytes: \0\xff\xfe\xc0\x80\xed\xa0\x80 \27[31mred\27[0m", 0)
