-- expect: limit=time
-- limits: fuel=100000000000 timeout_ms=300
-- why: with unlimited fuel, the deadline must interrupt a runaway inside one C call (string.rep of "" a quadrillion times)
print(#string.rep("", 1e15))
