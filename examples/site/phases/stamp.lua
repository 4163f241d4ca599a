-- Header filter: add a header to whatever the content phase sends.
ngx.header["X-Filtered"] = "shout"
