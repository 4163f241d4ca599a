-- expect: limit=fuel
-- limits: fuel=100000000
-- why: like rep of "", but through gsub-free path: string.rep("", n, "") in a pcall (fuel is not catchable)
print(pcall(string.rep, "", math.maxinteger, ""))
