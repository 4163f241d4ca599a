-- A temporary redirect to the hello page.
return ngx.redirect("/hello?name=redirected")
