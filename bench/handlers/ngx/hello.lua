-- hello: the smallest response. Served as is by moonwall (--root) and by
-- nginx+ngx_lua (content_by_lua_file).
ngx.say("hello")
