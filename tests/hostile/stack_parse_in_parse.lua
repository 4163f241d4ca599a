-- expect: limit=fuel
-- limits: fuel=100000000
-- why: a load() reader that re-enters load() at every token: nested parsers fail at the C-call cap and are retried forever
local depth = 0
local function reader()
  depth = depth + 1
  if depth > 100000 then return nil end
  local f = load(reader)
  return "("
end
local f, err = load(reader)
error(err, 0)
