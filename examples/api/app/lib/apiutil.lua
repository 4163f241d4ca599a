-- Shared helpers of the example API (loaded with require from lib_dirs).
local cjson = require("cjson.safe")

local M = {}

-- Answer with `status` and a JSON body, and end the request.
function M.reply(status, body)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  ngx.say(cjson.encode(body))
  return ngx.exit(status)
end

-- The API keys: { key = name }, read from the granted data directory.
function M.load_keys(path)
  local keys = {}
  for line in io.lines(path) do
    local name, key = line:match("^(%w+)%s+(%S+)$")
    if name then keys[key] = name end
  end
  return keys
end

return M
