-- The log phase: one line per proxied request, with what the upstream did.
ngx.log(ngx.INFO, "user=", ngx.ctx.user or "-", " upstream=", ngx.var.upstream_addr or "-",
  " status=", ngx.var.upstream_status or "-", " upstream_time=", ngx.var.upstream_response_time or "-")
