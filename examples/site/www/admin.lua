-- Only reached when the access phase let the request in.
ngx.header.content_type = "text/plain"
ngx.say("welcome, ", ngx.ctx.user, ": the access phase let you in")
