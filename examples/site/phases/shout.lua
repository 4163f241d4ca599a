-- Body filter: rewrite each chunk of the body on its way out.
local chunk = ngx.arg[1]
if chunk then ngx.arg[1] = chunk:upper() end
