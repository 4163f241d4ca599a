-- The blog tenant's front page.
ngx.header["Content-Type"] = "text/html"
ngx.say("<h1>blog</h1><p>served for host ", ngx.var.host, "</p>")
