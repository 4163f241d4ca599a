-- A pure-Lua module for require() once lib_dirs is implemented.
return { hello = function(name) return "hello, " .. name end }
