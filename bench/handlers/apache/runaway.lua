-- runaway for Apache mod_lua: never ends.
function handle(r)
  while true do end
  return apache2.OK
end
