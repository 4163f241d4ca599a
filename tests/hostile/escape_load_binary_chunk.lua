-- expect: completed
-- why: a hand-made binary chunk ("\27Lua" header) must be refused by load in every mode and calling form
local fake = "\27Lua\x54\0\x19\x93\r\n\x1a\n\4\8\8\x78\x56\0\0\0\0\0\0\0\0\0\0\0\x28\x77\x40" .. string.rep("\0", 64)
for _, mode in ipairs({ nil, "b", "bt", "t", "tb" }) do
  local f, err = load(fake, "=fake", mode)
  assert(f == nil and type(err) == "string", "binary accepted in mode " .. tostring(mode))
end
local f = load(fake, "=fake", "bt", {})
assert(f == nil)
print("binary chunks refused")
