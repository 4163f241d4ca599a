-- expect: limit=fuel
-- limits: fuel=50000000
-- why: a generic for with a stateless iterator that never returns nil
local function forever(_, i) return i + 1 end
for i in forever, nil, 0 do end
