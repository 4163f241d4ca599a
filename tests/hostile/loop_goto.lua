-- expect: limit=fuel
-- limits: fuel=50000000
-- why: a backwards goto is a loop without any loop keyword
local n = 0
::again::
n = n + 1
goto again
