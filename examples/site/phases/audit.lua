-- Log phase: runs after the response, even after errors and limits.
ngx.log(ngx.NOTICE, "admin area: ", ngx.var.request_uri, " -> ", ngx.status,
  " user=", ngx.ctx.user or "-")
