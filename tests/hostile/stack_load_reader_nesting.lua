-- expect: error=C stack overflow
-- why: a load() reader function that calls load() with another reader: the parser is suspended mid-parse at every level
local function reader_at(depth)
  local sent = false
  return function()
    if sent then return nil end
    sent = true
    local f = assert(load(reader_at(depth + 1)))
    return "return " .. depth
  end
end
local f, err = load(reader_at(1))
assert(f == nil)
error(err, 0)
