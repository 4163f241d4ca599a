-- expect: limit=fuel
-- limits: fuel=50000000
-- why: catch an error and retry forever; each attempt costs fuel, none is free
local attempts = 0
while true do
  local ok = pcall(error, "try again")
  if not ok then attempts = attempts + 1 end
end
