-- expect: completed
-- limits: memory_mib=32 fuel=1000000000
-- why: grow the heap to ~20 MB, release it all, and grow again several times: freeing and trimming must never fault
for round = 1, 3 do
  local s = "ab"
  for i = 1, 22 do s = s .. s end -- 8 MiB
  local t = {}
  for i = 1, 100000 do t[i] = i end
  s, t = nil, nil
  collectgarbage()
  collectgarbage()
end
print("heap after churn (KiB):", collectgarbage("count"))
