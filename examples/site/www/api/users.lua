-- A small JSON API: GET /api/users lists users, GET /api/users/ID shows one.
local users = {
  { id = 1, name = "Ada", languages = { "Lua", "C" } },
  { id = 2, name = "Grace", languages = { "COBOL" } },
}

-- A JSON encoder for the plain values this API returns.
local function encode(value)
  local kind = type(value)
  if kind == "string" then
    return '"' .. value:gsub('[%c"\\]', function(c)
      return string.format("\\u%04x", c:byte())
    end) .. '"'
  elseif kind == "number" or kind == "boolean" then
    return tostring(value)
  elseif kind == "table" then
    local parts = {}
    if #value > 0 then
      for i, item in ipairs(value) do parts[i] = encode(item) end
      return "[" .. table.concat(parts, ",") .. "]"
    end
    local keys = {}
    for key in pairs(value) do keys[#keys + 1] = key end
    table.sort(keys)
    for i, key in ipairs(keys) do parts[i] = encode(key) .. ":" .. encode(value[key]) end
    return "{" .. table.concat(parts, ",") .. "}"
  end
  return "null"
end

local function reply(status, body)
  ngx.status = status
  ngx.header.content_type = "application/json"
  ngx.say(encode(body))
end

if ngx.req.get_method() ~= "GET" then
  ngx.header["Allow"] = "GET"
  return reply(405, { error = "method not allowed" })
end

local id = ngx.var.uri:match("^/api/users/(%d+)$")
if id then
  for _, user in ipairs(users) do
    if user.id == tonumber(id) then return reply(200, user) end
  end
  return reply(404, { error = "no user " .. id })
end
reply(200, { users = users, count = #users })
