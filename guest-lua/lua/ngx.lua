-- The `ngx` API of moonwall, following OpenResty's lua-nginx-module, and the
-- runner that takes one request through its phases.
--
-- Called by glue/http.c with:
--   prim     the host primitives (send_head, write, flush, log, where, md5,
--            sha1, hmac_sha1, crc32, b64enc, b64dec, now, null)
--   util     the pure-Lua helpers of ngx_util.lua
-- Returns { serve = function(request, sources), log_only = function(...) }.
--
-- Everything here runs inside the sandbox and is as untrusted as the scripts
-- themselves: the host re-checks every status, header and byte it is sent.

local prim, util = ...

local type, tostring, tonumber, pairs, ipairs, select, error, setmetatable, rawget, rawset, next, load =
      type, tostring, tonumber, pairs, ipairs, select, error, setmetatable, rawget, rawset, next, load
local byte, find, sub, lower, gsub, format, rep = string.byte, string.find, string.sub, string.lower,
      string.gsub, string.format, string.rep
local concat, insert, remove = table.concat, table.insert, table.remove
local floor, mtype = math.floor, math.type
local raw_pcall, raw_xpcall = pcall, xpcall
local raw_resume = coroutine.resume
local traceback = debug.traceback

local ngx = {}

---------------------------------------------------------------------------
-- constants
---------------------------------------------------------------------------

ngx.OK, ngx.ERROR, ngx.AGAIN, ngx.DONE, ngx.DECLINED = 0, -1, -2, -4, -5

local statuses = {
  HTTP_CONTINUE = 100, HTTP_SWITCHING_PROTOCOLS = 101, HTTP_OK = 200, HTTP_CREATED = 201,
  HTTP_ACCEPTED = 202, HTTP_NO_CONTENT = 204, HTTP_PARTIAL_CONTENT = 206,
  HTTP_SPECIAL_RESPONSE = 300, HTTP_MOVED_PERMANENTLY = 301, HTTP_MOVED_TEMPORARILY = 302,
  HTTP_SEE_OTHER = 303, HTTP_NOT_MODIFIED = 304, HTTP_TEMPORARY_REDIRECT = 307,
  HTTP_PERMANENT_REDIRECT = 308, HTTP_BAD_REQUEST = 400, HTTP_UNAUTHORIZED = 401,
  HTTP_PAYMENT_REQUIRED = 402, HTTP_FORBIDDEN = 403, HTTP_NOT_FOUND = 404, HTTP_NOT_ALLOWED = 405,
  HTTP_NOT_ACCEPTABLE = 406, HTTP_REQUEST_TIMEOUT = 408, HTTP_CONFLICT = 409, HTTP_GONE = 410,
  HTTP_UPGRADE_REQUIRED = 426, HTTP_TOO_MANY_REQUESTS = 429, HTTP_CLOSE = 444, HTTP_ILLEGAL = 451,
  HTTP_INTERNAL_SERVER_ERROR = 500, HTTP_METHOD_NOT_IMPLEMENTED = 501, HTTP_BAD_GATEWAY = 502,
  HTTP_SERVICE_UNAVAILABLE = 503, HTTP_GATEWAY_TIMEOUT = 504, HTTP_VERSION_NOT_SUPPORTED = 505,
  HTTP_INSUFFICIENT_STORAGE = 507,
  HTTP_GET = 2, HTTP_HEAD = 4, HTTP_POST = 8, HTTP_PUT = 16, HTTP_DELETE = 32, HTTP_MKCOL = 64,
  HTTP_COPY = 128, HTTP_MOVE = 256, HTTP_OPTIONS = 512, HTTP_PROPFIND = 1024,
  HTTP_PROPPATCH = 2048, HTTP_LOCK = 4096, HTTP_UNLOCK = 8192, HTTP_PATCH = 16384,
  HTTP_TRACE = 32768,
}
for name, value in pairs(statuses) do ngx[name] = value end

local levels = { "STDERR", "EMERG", "ALERT", "CRIT", "ERR", "WARN", "NOTICE", "INFO", "DEBUG" }
for index, name in ipairs(levels) do ngx[name] = index - 1 end
local NOTICE, ERR = ngx.NOTICE, ngx.ERR

ngx.null = prim.null

local reasons = {
  [200] = "OK", [201] = "Created", [202] = "Accepted", [204] = "No Content", [206] = "Partial Content",
  [301] = "Moved Permanently", [302] = "Found", [303] = "See Other", [304] = "Not Modified",
  [307] = "Temporary Redirect", [308] = "Permanent Redirect", [400] = "Bad Request",
  [401] = "Unauthorized", [402] = "Payment Required", [403] = "Forbidden", [404] = "Not Found",
  [405] = "Not Allowed", [406] = "Not Acceptable", [408] = "Request Time-out", [409] = "Conflict",
  [410] = "Gone", [411] = "Length Required", [412] = "Precondition Failed",
  [413] = "Request Entity Too Large", [414] = "Request-URI Too Large",
  [415] = "Unsupported Media Type", [416] = "Requested Range Not Satisfiable",
  [429] = "Too Many Requests", [451] = "Unavailable For Legal Reasons",
  [500] = "Internal Server Error", [501] = "Not Implemented", [502] = "Bad Gateway",
  [503] = "Service Temporarily Unavailable", [504] = "Gateway Time-out",
  [505] = "HTTP Version Not Supported", [507] = "Insufficient Storage",
}

---------------------------------------------------------------------------
-- per-request state (the instance serves exactly one request)
---------------------------------------------------------------------------

local request            -- the record the host sent (fields as in wit/http.wit)
local phase = "init"     -- ngx.get_phase()
local handlers = {}      -- compiled phase handlers
local req_headers = {}   -- { {name = lowercase name, value = string}, ... } in order
local uri, query         -- current $uri and $args (rewritable)
local body_read = false
local user_vars = {}     -- ngx.var assignments to names moonwall does not define

local resp = {
  status = 0,            -- ngx.status
  headers = {},          -- lowercase name -> { name = as set, value = string or array }
  order = {},            -- lowercase names in the order first set
  head_sent = false,
  finished = false,      -- eof sent
  buffer = {}, buffered = 0,
  body_bytes = 0,
}

local EXIT = setmetatable({}, { __tostring = function() return "ngx.exit" end })
local exit_status        -- the argument of the last ngx.exit
local filter_failure     -- a Lua error in a filter, carried out of the phase it ran in

---------------------------------------------------------------------------
-- errors: ngx.exit unwinds through pcall; a filter error aborts the phase
---------------------------------------------------------------------------

local function passes_through(err) return err == EXIT end

local function rethrow(ok, ...)
  if not ok and passes_through((...)) then error((...), 0) end
  return ok, ...
end

pcall = function(f, ...) return rethrow(raw_pcall(f, ...)) end
xpcall = function(f, handler, ...)
  return rethrow(raw_xpcall(f, function(err)
    if passes_through(err) then return err end
    return handler(err)
  end, ...))
end
coroutine.resume = function(co, ...) return rethrow(raw_resume(co, ...)) end

local function describe(err)
  if type(err) == "string" then return err end
  local mt = getmetatable(err)
  if mt and mt.__tostring then
    local ok, text = raw_pcall(tostring, err)
    if ok and type(text) == "string" then return text end
  end
  if type(err) == "number" then return tostring(err) end
  return format("(error object is a %s value)", type(err))
end

local function message_handler(err)
  if err == EXIT then return EXIT end
  -- The script's frames only: cut where the runner called the handler.
  local trace = gsub(traceback(nil, 2), "\n\t%[C%]: in upvalue 'raw_xpcall'.*$", "")
  return { message = describe(err), traceback = trace }
end

-- Run one handler; nil when it returned, "exit" after ngx.exit, or an error table.
local function run_handler(name, fn)
  local previous = phase
  phase = name
  local ok, err = raw_xpcall(fn, message_handler)
  phase = previous
  if ok then return nil end
  if err == EXIT then
    if filter_failure then return filter_failure end
    return "exit"
  end
  err.phase = name
  return err
end

local function log_error_of(err)
  prim.log(ERR, (err.phase or phase) .. " phase: " .. err.message)
end

---------------------------------------------------------------------------
-- logging
---------------------------------------------------------------------------

local function log_args(level, ...)
  local n = select("#", ...)
  local parts = {}
  for i = 1, n do
    local v = select(i, ...)
    if v == nil then parts[i] = "nil"
    elseif v == prim.null then parts[i] = "null"
    elseif type(v) == "string" or type(v) == "number" or type(v) == "boolean" then parts[i] = tostring(v)
    else
      local mt = getmetatable(v)
      if mt and mt.__tostring then parts[i] = tostring(v)
      else error(format("bad argument #%d to 'log' (string, number, boolean, or nil expected, got %s)",
        i + 1, type(v)), 3) end
    end
  end
  prim.log(level, (prim.where(3) or "") .. concat(parts))
end

function ngx.log(level, ...)
  if mtype(level) ~= "integer" or level < 0 or level > 8 then
    error("bad argument #1 to 'log' (bad log level)", 2)
  end
  log_args(level, ...)
end

print = function(...) log_args(NOTICE, ...) end

---------------------------------------------------------------------------
-- output
---------------------------------------------------------------------------

local function header_key(name)
  return lower((gsub(name, "_", "-")))
end

local function default_content_type()
  return "text/plain"
end

local send_headers  -- forward

local body_filter_arg = { nil, false }
ngx.arg = setmetatable({}, {
  __index = function(_, k) if phase == "body_filter" then return body_filter_arg[k] end end,
  __newindex = function(_, k, v)
    if phase ~= "body_filter" then error("API disabled in the current context", 2) end
    if k == 1 then
      if v == nil then v = "" end
      if type(v) ~= "string" then v = tostring(v) end
      body_filter_arg[1] = v
    elseif k == 2 then
      body_filter_arg[2] = not not v
    else
      error("bad index: " .. tostring(k), 2)
    end
  end,
})

-- Pass a chunk through the body filter and out to the host.
local function emit(chunk, eof)
  if handlers.body_filter then
    body_filter_arg[1], body_filter_arg[2] = chunk, eof
    local result = run_handler("body_filter", handlers.body_filter)
    if type(result) == "table" then
      filter_failure = result
      error(EXIT, 0)
    end
    chunk, eof = body_filter_arg[1] or "", body_filter_arg[2]
    body_filter_arg[1], body_filter_arg[2] = nil, false
  end
  if #chunk > 0 then
    resp.body_bytes = resp.body_bytes + #chunk
    local ok, err = prim.write(chunk)
    if not ok then error(err, 0) end
  end
  if eof then resp.finished = true end
end

local BUFFER_LIMIT = 16384

local function drain(eof)
  local chunk = ""
  if resp.buffered > 0 then
    chunk = concat(resp.buffer)
    resp.buffer, resp.buffered = {}, 0
  end
  if #chunk > 0 or eof then emit(chunk, eof) end
end

local function stringify(out, v, depth)
  local t = type(v)
  if t == "string" then out[#out + 1] = v
  elseif t == "number" then
    out[#out + 1] = mtype(v) == "float" and v == floor(v) and v > -1e15 and v < 1e15
      and format("%d", v) or tostring(v)
  elseif v == nil then out[#out + 1] = "nil"
  elseif t == "boolean" then out[#out + 1] = v and "true" or "false"
  elseif v == prim.null then out[#out + 1] = "null"
  elseif t == "table" and depth < 100 then
    for i = 1, #v do stringify(out, v[i], depth + 1) end
  else
    error(format("bad argument to 'print' (string, number, boolean, nil, ngx.null, or array table expected, got %s)", t), 4)
  end
end

local function output(newline, ...)
  if phase ~= "rewrite" and phase ~= "access" and phase ~= "content" then
    error("API disabled in the context of " .. phase, 3)
  end
  if resp.finished then return nil, "nginx output filter error" end
  local out = {}
  for i = 1, select("#", ...) do stringify(out, (select(i, ...)), 0) end
  if newline then out[#out + 1] = "\n" end
  local text = concat(out)
  if not resp.head_sent then send_headers() end
  if request.method == "HEAD" then return 1 end
  resp.buffer[#resp.buffer + 1] = text
  resp.buffered = resp.buffered + #text
  if resp.buffered >= BUFFER_LIMIT then drain(false) end
  return 1
end

function ngx.print(...) return output(false, ...) end
function ngx.say(...) return output(true, ...) end

function ngx.flush()
  if resp.finished then return nil, "already seen eof" end
  if not resp.head_sent then send_headers() end
  drain(false)
  prim.flush()
  return 1
end

local function finish_response()
  if resp.finished then return end
  if not resp.head_sent then send_headers() end
  drain(true)
end

function ngx.eof()
  if resp.finished then return nil, "seen eof" end
  finish_response()
  return 1
end

---------------------------------------------------------------------------
-- response headers and status
---------------------------------------------------------------------------

local function check_header_value(v)
  if type(v) == "number" then v = tostring(v) end
  if type(v) ~= "string" then
    error("attempt to set a header value of type " .. type(v), 4)
  end
  return v
end

local function set_response_header(name, value)
  if type(name) ~= "string" then error("bad argument #2 to 'ngx.header' (string expected)", 3) end
  if resp.head_sent then
    prim.log(ERR, (prim.where(3) or "") .. "attempt to set ngx.header." .. name
      .. " after sending out response headers")
    return
  end
  local key = header_key(name)
  local display = gsub(name, "_", "-")
  if value == nil or (type(value) == "table" and next(value) == nil) then
    if resp.headers[key] then
      resp.headers[key] = nil
      for i, k in ipairs(resp.order) do if k == key then remove(resp.order, i) break end end
    end
    return
  end
  if type(value) == "table" then
    local list = {}
    for i = 1, #value do list[i] = check_header_value(value[i]) end
    value = list
  else
    value = check_header_value(value)
  end
  if not resp.headers[key] then resp.order[#resp.order + 1] = key end
  resp.headers[key] = { name = display, value = value }
end

ngx.header = setmetatable({}, {
  __index = function(_, name)
    if type(name) ~= "string" then return nil end
    local entry = resp.headers[header_key(name)]
    if entry then return entry.value end
    if header_key(name) == "content-type" and not resp.head_sent then return nil end
  end,
  __newindex = function(_, name, value) set_response_header(name, value) end,
})

ngx.resp = {}
function ngx.resp.get_headers(max_headers)
  max_headers = max_headers or 100
  local result, count = {}, 0
  for _, key in ipairs(resp.order) do
    if max_headers > 0 and count >= max_headers then return result, "truncated" end
    local value = resp.headers[key].value
    result[key] = type(value) == "table" and { table.unpack(value) } or value
    count = count + 1
  end
  return result
end

send_headers = function()
  if resp.head_sent or resp.sending then return end
  resp.sending = true  -- the header filter may still change status and headers
  if resp.status == 0 then resp.status = 200 end
  if handlers.header_filter then
    local result = run_handler("header_filter", handlers.header_filter)
    if type(result) == "table" then
      filter_failure = result
      error(EXIT, 0)
    end
  end
  resp.head_sent = true
  local list = {}
  local has_type = false
  for _, key in ipairs(resp.order) do
    local entry = resp.headers[key]
    if key == "content-type" then has_type = true end
    if type(entry.value) == "table" then
      for _, v in ipairs(entry.value) do list[#list + 1] = entry.name; list[#list + 1] = v end
    else
      list[#list + 1] = entry.name; list[#list + 1] = entry.value
    end
  end
  if not has_type and resp.status ~= 204 and resp.status ~= 304 then
    list[#list + 1] = "Content-Type"; list[#list + 1] = default_content_type()
  end
  local ok, err = prim.send_head(resp.status, list)
  if not ok then error(err, 0) end
end

function ngx.send_headers()
  if resp.head_sent then return nil, "header already sent" end
  send_headers()
  return 1
end

setmetatable(ngx, {
  __index = function(_, key)
    if key == "status" then return resp.status end
    if key == "headers_sent" then return resp.head_sent end
    if key == "ctx" then
      local ctx = {}
      rawset(ngx, "ctx", ctx)
      return ctx
    end
  end,
  __newindex = function(t, key, value)
    if key == "status" then
      if resp.head_sent then
        prim.log(ERR, (prim.where(2) or "") .. "attempt to set ngx.status after sending out response headers")
        return
      end
      local status = tonumber(value)
      if not status or mtype(status) == "float" and status ~= floor(status) then
        error("bad argument to 'ngx.status' (number expected)", 2)
      end
      resp.status = floor(status)
      return
    end
    if key == "headers_sent" then error("attempt to set ngx.headers_sent", 2) end
    rawset(t, key, value)
  end,
})

---------------------------------------------------------------------------
-- ngx.exit, ngx.redirect, ngx.get_phase
---------------------------------------------------------------------------

function ngx.get_phase() return phase end

function ngx.exit(status)
  if mtype(status) ~= "integer" then
    local n = tonumber(status)
    if not n then error("bad argument #1 to 'exit' (number expected, got " .. type(status) .. ")", 2) end
    status = floor(n)
  end
  if phase == "log" or phase == "header_filter" or phase == "body_filter" then
    exit_status = status
    error(EXIT, 0)
  end
  if resp.head_sent and status >= 200 then status = ngx.OK end
  exit_status = status
  error(EXIT, 0)
end

local redirect_codes = { [301] = true, [302] = true, [303] = true, [307] = true, [308] = true }
function ngx.redirect(target, status)
  status = status or 302
  if not redirect_codes[status] then
    error("only ngx.HTTP_MOVED_TEMPORARILY, ngx.HTTP_MOVED_PERMANENTLY, ngx.HTTP_PERMANENT_REDIRECT,"
      .. " ngx.HTTP_SEE_OTHER, and ngx.HTTP_TEMPORARY_REDIRECT are allowed", 2)
  end
  if type(target) ~= "string" then error("bad argument #1 to 'redirect' (string expected)", 2) end
  if find(target, "[\r\n]") then error("bad argument #1 to 'redirect' (invalid characters)", 2) end
  if resp.head_sent then error("attempt to call ngx.redirect after sending out the headers", 2) end
  set_response_header("Location", target)
  ngx.exit(status)
end

---------------------------------------------------------------------------
-- ngx.req
---------------------------------------------------------------------------

ngx.req = {}

function ngx.req.get_method() return request.method end
function ngx.req.http_version() return tonumber(request.http_version) end
function ngx.req.start_time() return request.start_time end

local function normalize_max(max)
  if max == nil then return 100 end
  if type(max) ~= "number" then error("bad argument #1 (number expected)", 3) end
  return floor(max)
end

function ngx.req.get_uri_args(max_args)
  return util.decode_args(query or "", normalize_max(max_args))
end

function ngx.req.set_uri_args(args)
  if type(args) == "table" then args = util.encode_args(args)
  elseif type(args) == "number" then args = tostring(args)
  elseif type(args) ~= "string" then error("bad argument #1 to 'set_uri_args' (string or table expected)", 2) end
  query = args
end

function ngx.req.set_uri(new_uri, jump)
  if type(new_uri) ~= "string" or new_uri == "" then
    error("bad argument #1 to 'set_uri' (non-empty string expected)", 2)
  end
  if jump then
    error("ngx.req.set_uri with jump = true is not supported by moonwall (no internal redirects)", 2)
  end
  uri = new_uri
end

function ngx.req.read_body() body_read = true end
function ngx.req.discard_body() body_read = true end

function ngx.req.get_body_data()
  if not body_read or #request.body == 0 then return nil end
  return request.body
end

function ngx.req.get_post_args(max_args)
  if not body_read then return nil, "request body not read" end
  return util.decode_args(request.body, normalize_max(max_args))
end

local function find_header(name)
  local key = header_key(name)
  local values
  for _, h in ipairs(req_headers) do
    if h.name == key then
      if values == nil then values = h.value
      elseif type(values) == "table" then values[#values + 1] = h.value
      else values = { values, h.value } end
    end
  end
  return values
end

local headers_mt = {
  __index = function(t, key)
    if type(key) ~= "string" then return nil end
    local normalized = header_key(key)
    if normalized ~= key then return rawget(t, normalized) end
  end,
}

function ngx.req.get_headers(max_headers, raw)
  local limit = normalize_max(max_headers)
  local result, count = {}, 0
  for _, h in ipairs(req_headers) do
    if limit > 0 and count >= limit then return setmetatable(result, headers_mt), "truncated" end
    local existing = result[h.name]
    if existing == nil then result[h.name] = h.value
    elseif type(existing) == "table" then existing[#existing + 1] = h.value
    else result[h.name] = { existing, h.value } end
    count = count + 1
  end
  if raw then return result end
  return setmetatable(result, headers_mt)
end

function ngx.req.clear_header(name)
  if type(name) ~= "string" then error("bad argument #1 to 'clear_header' (string expected)", 2) end
  local key = header_key(name)
  for i = #req_headers, 1, -1 do
    if req_headers[i].name == key then remove(req_headers, i) end
  end
end

function ngx.req.set_header(name, value)
  if type(name) ~= "string" then error("bad argument #1 to 'set_header' (string expected)", 2) end
  ngx.req.clear_header(name)
  if value == nil then return end
  local key = header_key(name)
  local values = type(value) == "table" and value or { value }
  for _, v in ipairs(values) do
    v = tostring(v)
    if find(v, "[\r\n]") then error("bad argument #2 to 'set_header' (invalid header value)", 2) end
    req_headers[#req_headers + 1] = { name = key, value = v }
  end
end

---------------------------------------------------------------------------
-- ngx.var
---------------------------------------------------------------------------

local function arg_value(name)
  if not query or query == "" then return nil end
  for pair in (query .. "&"):gmatch("([^&]*)&") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    if k and lower(k) == name then return v end
  end
end

local function cookie_value(name)
  local cookie = find_header("cookie")
  if type(cookie) == "table" then cookie = concat(cookie, "; ") end
  if not cookie then return nil end
  for pair in (cookie .. ";"):gmatch("%s*([^;]*);") do
    local k, v = pair:match("^([^=]*)=(.*)$")
    if k == name then return v end
  end
end

local function header_value(name)
  local v = find_header(name)
  if type(v) == "table" then return concat(v, ", ") end
  return v
end

local builtin_vars = {
  uri = function() return uri end,
  document_uri = function() return uri end,
  args = function() if query ~= "" then return query end end,
  query_string = function() if query ~= "" then return query end end,
  is_args = function() return query ~= "" and "?" or "" end,
  request_uri = function() return request.request_uri end,
  request_method = function() return request.method end,
  host = function() return request.host end,
  server_name = function() return request.host end,
  hostname = function() return request.host end,
  scheme = function() return request.scheme end,
  https = function() return request.scheme == "https" and "on" or "" end,
  server_port = function() return tostring(request.server_port) end,
  remote_addr = function() return request.remote_addr end,
  remote_port = function() return tostring(request.remote_port) end,
  server_protocol = function() return "HTTP/" .. request.http_version end,
  request = function()
    return request.method .. " " .. request.request_uri .. " HTTP/" .. request.http_version
  end,
  content_type = function() return header_value("content-type") end,
  content_length = function() return header_value("content-length") end,
  request_body = function() if body_read and #request.body > 0 then return request.body end end,
  request_length = function() return tostring(#request.body) end,
  status = function() return tostring(resp.status) end,
  body_bytes_sent = function() return tostring(resp.body_bytes) end,
  request_time = function() return format("%.3f", prim.now() - request.start_time) end,
  msec = function() return format("%.3f", prim.now()) end,
}

local writable_vars = {
  args = function(v) ngx.req.set_uri_args(v or "") end,
  query_string = function(v) ngx.req.set_uri_args(v or "") end,
}

ngx.var = setmetatable({}, {
  __index = function(_, name)
    if type(name) ~= "string" then
      error("bad variable name", 2)
    end
    local builtin = builtin_vars[name]
    if builtin then return builtin() end
    local lname = lower(name)
    if sub(lname, 1, 5) == "http_" then return header_value(sub(lname, 6)) end
    if sub(lname, 1, 4) == "arg_" then return arg_value(sub(lname, 5)) end
    if sub(name, 1, 7) == "cookie_" then return cookie_value(sub(name, 8)) end
    return user_vars[name]
  end,
  __newindex = function(_, name, value)
    if type(name) ~= "string" then error("bad variable name", 2) end
    if value ~= nil and type(value) ~= "string" and type(value) ~= "number" then
      error("bad variable value", 2)
    end
    local writer = writable_vars[name]
    if writer then return writer(value) end
    if builtin_vars[name] or find(name, "^http_") or find(name, "^arg_") or find(name, "^cookie_") then
      error(format('variable "%s" not changeable', name), 2)
    end
    user_vars[name] = value ~= nil and tostring(value) or nil
  end,
})

---------------------------------------------------------------------------
-- time, strings, digests
---------------------------------------------------------------------------

local cached_now
function ngx.update_time() cached_now = prim.now() end
function ngx.now() return floor(cached_now * 1000 + 0.5) / 1000 end
function ngx.time() return floor(cached_now) end
function ngx.today() return util.today(floor(cached_now)) end
function ngx.localtime() return util.localtime(floor(cached_now)) end
function ngx.utctime() return util.utctime(floor(cached_now)) end
ngx.http_time = util.http_time
ngx.cookie_time = util.cookie_time
ngx.parse_http_time = util.parse_http_time
ngx.escape_uri = util.escape_uri
ngx.unescape_uri = util.unescape_uri
ngx.encode_args = util.encode_args
ngx.decode_args = util.decode_args
ngx.quote_sql_str = util.quote_sql_str

local function string_arg(v, fname)
  if type(v) == "number" then return tostring(v) end
  if v == nil then return "" end
  if type(v) ~= "string" then
    error(format("bad argument #1 to '%s' (string expected, got %s)", fname, type(v)), 3)
  end
  return v
end

local hex_digits = "0123456789abcdef"
local function to_hex(bin)
  return (gsub(bin, ".", function(c)
    local b = byte(c)
    local hi, lo = b // 16 + 1, b % 16 + 1
    return sub(hex_digits, hi, hi) .. sub(hex_digits, lo, lo)
  end))
end

function ngx.md5_bin(s) return prim.md5(string_arg(s, "md5_bin")) end
function ngx.md5(s) return to_hex(prim.md5(string_arg(s, "md5"))) end
function ngx.sha1_bin(s) return prim.sha1(string_arg(s, "sha1_bin")) end
function ngx.hmac_sha1(key, s)
  return prim.hmac_sha1(string_arg(key, "hmac_sha1"), string_arg(s, "hmac_sha1"))
end
function ngx.crc32_short(s) return prim.crc32(string_arg(s, "crc32_short")) end
function ngx.crc32_long(s) return prim.crc32(string_arg(s, "crc32_long")) end
function ngx.encode_base64(s, no_padding)
  return prim.b64enc(string_arg(s, "encode_base64"), not not no_padding)
end
function ngx.decode_base64(s)
  if type(s) ~= "string" then error("string argument only", 2) end
  return prim.b64dec(s)
end

---------------------------------------------------------------------------
-- the phase runner
---------------------------------------------------------------------------

local function error_page(status)
  local title = status .. " " .. (reasons[status] or "")
  return "<html>\r\n<head><title>" .. title .. "</title></head>\r\n<body>\r\n<center><h1>" .. title
    .. "</h1></center>\r\n<hr><center>moonwall</center>\r\n</body>\r\n</html>\r\n"
end

-- End the request with `status`, as nginx finalizes it.
local function finalize(status)
  if status == ngx.OK or status == ngx.DONE or resp.head_sent then
    finish_response()
    return
  end
  if status < 0 then status = 500 end
  resp.status = status
  if status >= 300 and status ~= 304 then
    for _, key in ipairs({ "content-type", "content-length" }) do
      if resp.headers[key] then set_response_header(key, nil) end
    end
    set_response_header("Content-Type", "text/html")
    send_headers()
    if request.method ~= "HEAD" then
      local page = error_page(status)
      resp.buffer[#resp.buffer + 1] = page
      resp.buffered = resp.buffered + #page
    end
  end
  finish_response()
end

-- Run `fn` (a step of the response) so that an ngx.exit or a filter error
-- inside it is handled like one in a phase handler.
local function guarded(step, ...)
  local ok, err = raw_pcall(step, ...)
  if ok then return nil end
  if err == EXIT then return filter_failure end
  if type(err) ~= "table" then err = { message = describe(err), traceback = "" } end
  err.phase = err.phase or phase
  return err
end

local function compile(sources)
  for _, name in ipairs({ "rewrite", "access", "content", "header_filter", "body_filter", "log" }) do
    local source = sources[name]
    if source then
      local fn, err = load(source.code, source.name, "t")
      if not fn then return { phase = name, message = err, traceback = "" } end
      handlers[name] = fn
    end
  end
end

local function begin(req)
  request = req
  uri, query = req.uri, req.query
  for i, h in ipairs(req.headers) do req_headers[i] = { name = lower(h.name), value = h.value } end
  cached_now = req.start_time
  _G.ngx = ngx
end

local function run_log_phase()
  if handlers.log then
    local result = run_handler("log", handlers.log)
    if type(result) == "table" then log_error_of(result) end
  end
end

-- Run the request; nil, or the error that stopped it.
local function serve(req, sources)
  begin(req)
  local failure = compile(sources)
  if failure then return failure end

  local outcome
  for _, name in ipairs({ "rewrite", "access" }) do
    local fn = handlers[name]
    if fn and not outcome then
      local result = run_handler(name, fn)
      if type(result) == "table" then
        outcome = result
      elseif result == "exit" and (exit_status >= 200 or exit_status == ngx.ERROR) then
        outcome = guarded(finalize, exit_status) or "done"
      elseif resp.finished then
        outcome = "done"
      end
    end
  end

  if not outcome then
    if handlers.content then
      local result = run_handler("content", handlers.content)
      if type(result) == "table" then
        outcome = result
      elseif result == "exit" then
        outcome = guarded(finalize, exit_status)
      else
        outcome = guarded(finish_response)
      end
    else
      outcome = guarded(finalize, ngx.HTTP_NOT_FOUND)
    end
  end

  phase = "log"
  run_log_phase()
  if type(outcome) == "table" then return outcome end
end

-- Only the log phase, after a limit stopped the request's own instance.
local function log_only(req, source, status)
  begin(req)
  resp.head_sent, resp.finished, resp.status = true, true, status
  local fn, err = load(source.code, source.name, "t")
  if not fn then
    prim.log(ERR, "log phase: " .. err)
    return
  end
  handlers.log = fn
  phase = "log"
  run_log_phase()
end

return { serve = serve, log_only = log_only }
