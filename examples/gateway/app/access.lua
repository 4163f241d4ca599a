-- The access phase of every request: an API key, then 10 requests a second
-- per key (a fixed window in the shared dict `ratelimit`). The upstream never
-- sees a request refused here.
local KEYS = {
  ["k-alice-0123456789"] = "alice",
  ["k-bob-9876543210"] = "bob",
}

local key = ngx.var.http_x_api_key
local user = key and KEYS[key]
if not user then
  ngx.status = 401
  ngx.header["Content-Type"] = "application/json"
  ngx.say('{"error":"missing or unknown X-Api-Key"}')
  return ngx.exit(401)
end

local window = "rl:" .. user .. ":" .. ngx.time()
local count = ngx.shared.ratelimit:incr(window, 1, 0, 2)
if count and count > 10 then
  ngx.header["Retry-After"] = "1"
  return ngx.exit(429)
end

-- The upstream learns who is calling, never the key.
ngx.req.clear_header("X-Api-Key")
ngx.req.set_header("X-User", user)
ngx.ctx.user = user
