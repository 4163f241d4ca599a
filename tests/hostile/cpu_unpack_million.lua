-- expect: error=too many results to unpack
-- why: table.unpack of 10 million nils would exceed the Lua stack limit
print(select("#", table.unpack({}, 1, 10000000)))
