-- runaway: a script that never ends.
while true do end
