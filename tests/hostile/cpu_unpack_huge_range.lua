-- expect: error=too many results to unpack
-- why: table.unpack over the whole integer range must be refused before pushing anything
print(table.unpack({}, math.mininteger, math.maxinteger))
