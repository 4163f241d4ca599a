-- Access phase: let a request in only with the right token, as a query
-- argument or an X-Token header. ngx.ctx carries the result to later phases.
local token = ngx.var.arg_token or ngx.var.http_x_token
if token ~= "let-me-in" then
  ngx.header["WWW-Authenticate"] = 'Token realm="admin"'
  return ngx.exit(ngx.HTTP_UNAUTHORIZED)
end
ngx.ctx.user = "admin"
