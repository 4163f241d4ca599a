-- Content phase: fetch an item from the upstream, return it as JSON with
-- who asked for it.
local http = require("resty.http")
local cjson = require("cjson.safe")
local util = require("apiutil")

local id = ngx.var.uri:match("^/v1/items/(%d+)$")
if not id then
  return util.reply(404, { error = "no such endpoint" })
end

local client = http.new()
client:set_timeout(1000)
local res, err = client:request_uri("http://127.0.0.1:9701/items/" .. id, {
  headers = { ["Accept"] = "application/json" },
})
if not res then
  ngx.log(ngx.ERR, "upstream: ", err)
  return util.reply(502, { error = "upstream unavailable" })
end
if res.status == 404 then
  return util.reply(404, { error = "no such item", id = tonumber(id) })
end
local item = cjson.decode(res.body)
if res.status ~= 200 or type(item) ~= "table" then
  return util.reply(502, { error = "bad upstream answer", status = res.status })
end

util.reply(200, { item = item, caller = ngx.ctx.caller, served_by = "moonwall" })
