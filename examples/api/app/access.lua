-- Access phase: who is calling (a bearer key), and are they within their rate?
local util = require("apiutil")

local LIMIT = 5     -- requests
local WINDOW = 1    -- per second, per key

local auth = ngx.var.http_authorization or ""
local key = auth:match("^Bearer%s+(%S+)$")
if not key then
  return util.reply(401, { error = "missing bearer key" })
end
local keys = util.load_keys("keys.txt")
local caller = keys[key]
if not caller then
  return util.reply(403, { error = "unknown key" })
end

-- A fixed window counter in the shared dict: the first request of a window
-- creates it with a TTL of one window.
local counters = ngx.shared.ratelimit
local count, err = counters:incr("rate:" .. caller, 1, 0, WINDOW)
if not count then
  ngx.log(ngx.ERR, "rate limiter: ", err)
  return util.reply(500, { error = "rate limiter unavailable" })
end
if count > LIMIT then
  ngx.header["Retry-After"] = WINDOW
  return util.reply(429, { error = "rate limit exceeded", limit = LIMIT })
end

ngx.ctx.caller = caller
