-- expect: syntax=jumps into the scope of local
-- why: goto jumping forward into the scope of a local must be rejected at compile time
do
  goto skip
  local x = 1
  ::skip::
  print(x)
end
