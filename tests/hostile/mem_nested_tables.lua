-- expect: limit=memory
-- limits: memory_mib=8 fuel=1000000000
-- why: an unbounded linked chain of tables (deep structure, never collectable)
local head = nil
while true do head = { next = head, pad = head and 1 or 0 } end
