-- json for Apache mod_lua: the same object as ngx/json.lua, built by hand.
function handle(r)
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
    ',"uri":"', r.uri, '"}',
  })
  r.content_type = "application/json"
  r:puts(body, "\n")
  return apache2.OK
end
