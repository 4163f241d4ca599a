-- hello for Apache mod_lua (LuaMapHandler ... handle).
function handle(r)
  r.content_type = "text/plain"
  r:puts("hello\n")
  return apache2.OK
end
