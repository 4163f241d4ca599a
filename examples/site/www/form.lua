-- A form: GET shows it, POST reads the urlencoded body and answers.
ngx.header.content_type = "text/html; charset=utf-8"
if ngx.req.get_method() == "POST" then
  ngx.req.read_body()
  local args = ngx.req.get_post_args()
  local function escape(s)
    return (tostring(s or ""):gsub("[<>&\"]", { ["<"] = "&lt;", [">"] = "&gt;", ["&"] = "&amp;", ['"'] = "&quot;" }))
  end
  ngx.say("<p>Thanks, ", escape(args.name), ". You said: ", escape(args.message), "</p>")
  return
end
ngx.say([[<form method="post" action="/form">
  <label>Name <input name="name"></label>
  <label>Message <input name="message"></label>
  <button>Send</button>
</form>]])
