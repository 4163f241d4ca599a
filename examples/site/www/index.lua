-- The front page: links to every example.
ngx.header.content_type = "text/html; charset=utf-8"
ngx.say([[<!doctype html>
<html><head><title>moonwall example site</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 2em auto">
<h1>moonwall example site</h1>
<p>Every request below runs its Lua in a fresh, limited WebAssembly sandbox.</p>
<ul>
  <li><a href="/hello?name=visitor">/hello?name=visitor</a>: plain text</li>
  <li><a href="/api/users">/api/users</a> and <a href="/api/users/2">/api/users/2</a>: a JSON API</li>
  <li><a href="/form">/form</a>: a form post</li>
  <li><a href="/redirect">/redirect</a>: a redirect</li>
  <li><a href="/headers">/headers</a>: request and response headers, a cookie</li>
  <li><a href="/admin/">/admin/</a>: refused by the access phase;
      <a href="/admin/?token=let-me-in">with the token</a> it is let in</li>
  <li><a href="/shout?name=filters">/shout</a>: rewritten by a body filter</li>
</ul>
<p>Served at ]], ngx.http_time(ngx.time()), [[.</p>
</body></html>]])
