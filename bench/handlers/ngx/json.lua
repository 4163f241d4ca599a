-- json: a small JSON object (about 100 bytes) built by hand, no JSON library.
local item = {
  id = 4711,
  name = "moonwall",
  price = 12.5,
  tags = { "lua", "wasm", "sandbox" },
  in_stock = true,
}
local tags = {}
for i, tag in ipairs(item.tags) do
  tags[i] = '"' .. tag .. '"'
end
local body = table.concat({
  '{"id":', tostring(item.id),
  ',"name":"', item.name, '"',
  ',"price":', tostring(item.price),
  ',"tags":[', table.concat(tags, ","), "]",
  ',"in_stock":', tostring(item.in_stock),
  ',"uri":"', ngx.var.uri, '"}',
})
ngx.header["Content-Type"] = "application/json"
ngx.say(body)
