-- Plain text, with a query argument.
local name = ngx.var.arg_name and ngx.unescape_uri(ngx.var.arg_name) or "world"
ngx.header.content_type = "text/plain; charset=utf-8"
ngx.say("hello, ", name, "!")
