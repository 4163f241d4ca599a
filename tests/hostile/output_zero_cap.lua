-- expect: limit=output
-- limits: output_kib=0
-- why: with a zero output cap even an empty print (one newline) is over the limit
print()
