-- Request headers in, response headers and a cookie out.
local headers = ngx.req.get_headers()
ngx.header["X-Powered-By"] = "moonwall"
ngx.header["Set-Cookie"] = { "visited=yes; Path=/; HttpOnly", "theme=dark; Path=/" }
ngx.header["Cache-Control"] = "no-store"
ngx.header.content_type = "text/plain"
ngx.say("your user agent: ", headers.user_agent or "(none)")
ngx.say("cookie 'visited': ", ngx.var.cookie_visited or "(not yet)")
local names = {}
for name in pairs(headers) do names[#names + 1] = name end
table.sort(names)
ngx.say("you sent: ", table.concat(names, ", "))
