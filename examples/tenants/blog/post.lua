-- /post?id=N
local id = tonumber(ngx.var.arg_id)
if not id then
  return ngx.exit(ngx.HTTP_BAD_REQUEST)
end
ngx.say("post ", id)
