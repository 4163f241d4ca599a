-- expect: completed
-- why: number formatting edge cases in concatenation and tostring (%.14g, integers, inf, nan) must be safe
local parts = {}
for _, v in ipairs({ math.maxinteger, math.mininteger, 2^63, -2^63, 1/0, -1/0, 0/0, 1e308, 5e-324, -0.0 }) do
  parts[#parts + 1] = v .. "|" .. tostring(v) .. "|" .. string.format("%q", v)
end
print(table.concat(parts, "\n"))
