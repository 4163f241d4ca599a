-- The header filter: the upstream's software stays private, and every answer
-- carries the id the gateway logs it under.
ngx.header["Server"] = nil
ngx.header["X-Powered-By"] = nil
ngx.header["X-Request-Id"] = ngx.md5(ngx.var.remote_addr .. ngx.var.remote_port .. ngx.now()):sub(1, 16)
ngx.header["X-User"] = ngx.ctx.user
