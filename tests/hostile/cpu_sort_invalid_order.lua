-- expect: error=invalid order function for sorting
-- why: an inconsistent comparator (always true) must make table.sort fail cleanly, not run off the array
local t = {}
for i = 1, 1000 do t[i] = i end
table.sort(t, function(a, b) return true end)
