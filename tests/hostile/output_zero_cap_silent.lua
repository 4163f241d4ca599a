-- expect: completed
-- limits: output_kib=0
-- why: with a zero output cap a script that writes nothing (empty warnings while off included) completes
warn("@off")
warn("not shown")
local s = string.format("%s", "nothing printed")
