-- expect: error=C stack overflow
-- why: a table.sort comparator that sorts another table with the same comparator
local function cmp(a, b)
  table.sort({ 3, 2, 1 }, cmp)
  return a < b
end
table.sort({ 5, 4, 3, 2, 1 }, cmp)
