-- The `ngx` API of moonwall, following OpenResty's lua-nginx-module, and the
-- runner that takes one request through its phases.
--
-- Called by glue/http.c with:
--   prim     the host primitives (send_head, write, flush, log, where, md5,
--            sha1, hmac_sha1, crc32, b64enc, b64dec, now, null)
--   util     the pure-Lua helpers of ngx_util.lua
-- Returns { serve = function(request, sources), log_only = function(...),
--           init = function(source) }.
-- A source is a phase handler glue/http.c has loaded (from Lua text, or from
-- the bytecode the host compiled): { name = ..., fn = chunk } or
-- { name = ..., err = why it did not load }.
--
-- Everything here runs inside the sandbox and is as untrusted as the scripts
-- themselves: the host re-checks every status, header and byte it is sent.
-- docs/lua-api.md describes the API and where it differs from OpenResty.

local prim, util = ...

local type, tostring, tonumber, pairs, ipairs, select, error, setmetatable, getmetatable, rawget, rawset =
      type, tostring, tonumber, pairs, ipairs, select, error, setmetatable, getmetatable, rawget, rawset
local byte, find, sub, lower, gsub, format = string.byte, string.find, string.sub, string.lower,
      string.gsub, string.format
local concat, remove, unpack = table.concat, table.remove, table.unpack
local match = string.match
local floor, mtype = math.floor, math.type
local raw_pcall, raw_xpcall = pcall, xpcall
local raw_resume = coroutine.resume
local traceback = debug.traceback

local ngx = {}
-- Capabilities, each its own module (guest-lua/lua/, glue/modules.c). The
-- host checks every use against the tenant's policy.
local tasks = require("moonwall.tasks")
ngx.shared = require("ngx.shared")
ngx.re = require("ngx.re")
ngx.socket = require("ngx.socket")

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
  HTTP_INTERNAL_SERVER_ERROR = 500, HTTP_NOT_IMPLEMENTED = 501, HTTP_METHOD_NOT_IMPLEMENTED = 501,
  HTTP_BAD_GATEWAY = 502, HTTP_SERVICE_UNAVAILABLE = 503, HTTP_GATEWAY_TIMEOUT = 504,
  HTTP_VERSION_NOT_SUPPORTED = 505, HTTP_INSUFFICIENT_STORAGE = 507,
}
for name, value in pairs(statuses) do ngx[name] = value end

local methods = {
  GET = 2, HEAD = 4, POST = 8, PUT = 16, DELETE = 32, MKCOL = 64, COPY = 128, MOVE = 256,
  OPTIONS = 512, PROPFIND = 1024, PROPPATCH = 2048, LOCK = 4096, UNLOCK = 8192, PATCH = 16384,
  TRACE = 32768,
}
local method_names = {}
for name, value in pairs(methods) do
  ngx["HTTP_" .. name] = value
  method_names[value] = name
end

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

-- nginx's default_type.
local DEFAULT_CONTENT_TYPE = "text/plain"

---------------------------------------------------------------------------
-- per-request state (the instance serves exactly one request)
---------------------------------------------------------------------------

local request            -- the record the host sent (fields as in wit/http.wit)
local phase = "init"     -- ngx.get_phase()
local handlers = {}      -- compiled phase handlers
local method             -- $request_method (ngx.req.set_method changes it)
local req_headers = {}   -- { {name = as sent, key = lowercase name, value = string}, ... } in order
local host_header_set = false  -- a script changed or cleared the Host header
local uri, query         -- current $uri and $args (rewritable)
local body_state = "unread"  -- "unread", "read" or "discarded"
local upstream_vars = {}  -- a proxied location's $upstream_* variables
local proxy_started = 0   -- when its content phase began (ngx.now's clock)
local user_vars = {}     -- ngx.var assignments to names moonwall does not define (lowercase names)

local resp = {
  status = 0,            -- ngx.status
  headers = {},          -- lowercase name -> { name = as set, value = string or array of strings }
  order = {},            -- lowercase names in the order first set
  mime_set = false,      -- the script set or cleared Content-Type (no default type then)
  sending = false,       -- the header filter runs, the head goes out next
  head_sent = false,
  header_only = false,   -- HEAD: the head went out, a body never will
  eof = false,           -- ngx.eof: the script's output is over
  closed = false,        -- the last chunk went through the body filter: nothing more goes out
  discard = false,       -- ngx.exit in header_filter replaced the response: later output is dropped
  seen_body = false,     -- ngx.print/ngx.say produced body data
  filter_eof = false,    -- the body filter set ngx.arg[2]: later chunks are dropped
  buffer = {}, buffered = 0,  -- bytes on their way to the host
  body_bytes = 0,
}

local EXIT = setmetatable({}, { __tostring = function() return "ngx.exit" end })
tasks.EXIT = EXIT
local exit_status        -- the argument of the last ngx.exit (outside the header filter)
local filter_exit        -- the argument of ngx.exit in the running header filter
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
  -- light threads spawned in the phase finish within it
  if ok and tasks.busy() then ok, err = raw_xpcall(tasks.drain, message_handler) end
  if not ok and tasks.busy() then tasks.kill_all() end
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

-- OpenResty's names of the phases, for "API disabled in the context of ...".
local context_names = {
  rewrite = "rewrite_by_lua*", access = "access_by_lua*", content = "content_by_lua*",
  header_filter = "header_filter_by_lua*", body_filter = "body_filter_by_lua*", log = "log_by_lua*",
  init = "init_by_lua*", balancer = "balancer_by_lua*",
}

local OUTPUT_PHASES = { rewrite = true, access = true, content = true }
local EXIT_PHASES = { rewrite = true, access = true, content = true, header_filter = true }
local REWRITE_PHASE = { rewrite = true }
local BODY_FILTER_PHASE = { body_filter = true }

-- Raise OpenResty's error unless the running phase is one of `allowed`;
-- `level` as for error(), counted from the caller of check_context.
local function check_context(allowed, level)
  if not allowed[phase] then
    error("API disabled in the context of " .. (context_names[phase] or phase), level + 1)
  end
end

---------------------------------------------------------------------------
-- strings
---------------------------------------------------------------------------

-- A number as LuaJIT prints it: 3.0 is "3", 0.1 is "0.1".
local function num2str(n)
  if mtype(n) == "float" then
    if n == floor(n) and n > -1e15 and n < 1e15 then return format("%d", n) end
    return format("%.14g", n)
  end
  return tostring(n)
end

local function hex_escape(c) return format("%%%02X", byte(c)) end
local function log_escape(c) return format("\\x%02X", byte(c)) end

-- Bytes OpenResty escapes as %XX in header names and values it is given.
local UNSAFE_HEADER_NAME = '[\0-\32"(),/:;<=>?@%[\\%]{}\127-\255]'
local UNSAFE_HEADER_VALUE = "[\0-\8\10-\31\127]"
-- Bytes ngx.redirect and ngx.req.set_uri refuse, and how they show them.
local UNSAFE_URI = "[\0-\8\10-\31\127]"
local LOGGED_AS_HEX = '[\0-\31"\\\127-\255]'

local function escape_header(s, unsafe)
  if find(s, unsafe) then s = gsub(s, unsafe, hex_escape) end
  return s
end

-- The first unsafe byte of a URI, as "0x0d", and the URI as it is logged.
local function unsafe_uri(s)
  local at = find(s, UNSAFE_URI)
  if at then return format("0x%02x", byte(s, at)), (gsub(s, LOGGED_AS_HEX, log_escape)) end
end

---------------------------------------------------------------------------
-- logging
---------------------------------------------------------------------------

local function log_args(level, ...)
  local n = select("#", ...)
  local parts = {}
  for i = 1, n do
    local v = select(i, ...)
    local t = type(v)
    if t == "string" then parts[i] = v
    elseif t == "number" then parts[i] = num2str(v)
    elseif v == nil then parts[i] = "nil"
    elseif t == "boolean" then parts[i] = v and "true" or "false"
    elseif v == prim.null then parts[i] = "null"
    else
      local mt = getmetatable(v)
      if mt and mt.__tostring then parts[i] = tostring(v)
      else error(format("bad argument #%d to 'log' (expected table to have __tostring metamethod)",
        i + 1), 3) end
    end
  end
  prim.log(level, (prim.where(3) or "") .. concat(parts))
end

function ngx.log(level, ...)
  if mtype(level) ~= "integer" then
    local n = tonumber(level)
    if not n then error("bad argument #1 to 'log' (number expected, got " .. type(level) .. ")", 2) end
    level = floor(n)
  end
  if level < 0 or level > 8 then
    error(format("bad argument #1 to 'log' (bad log level: %d)", level), 2)
  end
  log_args(level, ...)
end

print = function(...) log_args(NOTICE, ...) end

---------------------------------------------------------------------------
-- output: ngx.print/say -> body filter (one call per chunk) -> buffer -> host
---------------------------------------------------------------------------

local send_headers  -- forward

-- Append `v` (ngx.print's argument `argn`) to `out` as text.
-- `level`: error()'s level for a bad argument at depth 0.
local function stringify(out, v, depth, fname, argn, level)
  local t = type(v)
  if t == "string" then out[#out + 1] = v
  elseif t == "number" then out[#out + 1] = num2str(v)
  elseif v == nil then out[#out + 1] = "nil"
  elseif t == "boolean" then out[#out + 1] = v and "true" or "false"
  elseif v == prim.null then out[#out + 1] = "null"
  elseif t == "table" and depth < 100 then
    for i = 1, #v do stringify(out, v[i], depth + 1, fname, argn, level) end
  else
    error(format("bad argument #%d to '%s' (string, number, boolean, nil, ngx.null, or array table"
      .. " expected, but got %s)", argn, fname, t), level + depth)
  end
end

local BUFFER_LIMIT = 16384

local function flush_buffer()
  if resp.buffered == 0 then return end
  local chunk = concat(resp.buffer)
  resp.buffer, resp.buffered = {}, 0
  local ok, err = prim.write(chunk)
  if not ok then error(err, 0) end
end

local body_filter_arg = { nil, false }
ngx.arg = setmetatable({}, {
  __index = function(_, k) if phase == "body_filter" then return body_filter_arg[k] end end,
  __newindex = function(_, k, v)
    check_context(BODY_FILTER_PHASE, 2)
    if k == 1 then
      local t = type(v)
      if v == nil then v = ""
      elseif t == "number" then v = num2str(v)
      elseif t == "table" then
        local out = {}
        for i = 1, #v do stringify(out, v[i], 1, "ngx.arg", 1, 2) end
        v = concat(out)
      elseif t ~= "string" then
        error("bad chunk data type: " .. t, 2)
      end
      body_filter_arg[1] = v
    elseif k == 2 then
      body_filter_arg[2] = not not v
    else
      error("bad index: " .. tostring(k), 2)
    end
  end,
})

-- One chunk of the body on its way out: through the body filter (once per
-- chunk, as nginx calls it), then to the host.
local function pass(chunk, eof)
  if resp.closed or resp.header_only then return end
  if eof then resp.closed = true end
  if resp.filter_eof then return end
  if handlers.body_filter then
    body_filter_arg[1], body_filter_arg[2] = chunk, eof
    local result = run_handler("body_filter", handlers.body_filter)
    chunk, eof = body_filter_arg[1] or "", body_filter_arg[2]
    body_filter_arg[1], body_filter_arg[2] = nil, false
    if type(result) == "table" then
      filter_failure = result
      error(EXIT, 0)
    end
    if eof then resp.filter_eof = true end
  end
  if #chunk > 0 then
    resp.body_bytes = resp.body_bytes + #chunk
    resp.buffer[#resp.buffer + 1] = chunk
    resp.buffered = resp.buffered + #chunk
    if resp.buffered >= BUFFER_LIMIT then flush_buffer() end
  end
end

local function output(fname, newline, ...)
  check_context(OUTPUT_PHASES, 2)
  if resp.header_only then return nil, "header only" end
  if resp.eof then return nil, "seen eof" end
  local out = {}
  for i = 1, select("#", ...) do stringify(out, (select(i, ...)), 0, fname, i, 3) end
  if newline then out[#out + 1] = "\n" end
  if not resp.head_sent then send_headers() end
  if resp.header_only or resp.discard then return 1 end
  resp.seen_body = true
  pass(concat(out), false)
  return 1
end

function ngx.print(...) return output("print", false, ...) end
function ngx.say(...) return output("say", true, ...) end

function ngx.flush(wait)
  check_context(OUTPUT_PHASES, 2)
  if resp.header_only then return nil, "header only" end
  if resp.eof then return nil, "seen eof" end
  if not resp.head_sent or not (resp.seen_body or wait) then return nil, "nothing to flush" end
  flush_buffer()
  prim.flush()
  return 1
end

-- The end of the response: the headers if not yet sent, then the last chunk.
local function finish_response()
  resp.eof = true
  if not resp.head_sent then send_headers() end
  pass("", true)
  flush_buffer()
end

function ngx.eof()
  if resp.eof then return nil, "seen eof" end
  check_context(OUTPUT_PHASES, 2)
  finish_response()
  return 1
end

---------------------------------------------------------------------------
-- response headers and status
---------------------------------------------------------------------------

-- Headers nginx keeps one value of: a table sets the last element.
local single_valued = {
  ["content-type"] = true, ["content-length"] = true, ["content-encoding"] = true,
  ["content-range"] = true, ["location"] = true, ["refresh"] = true, ["last-modified"] = true,
  ["accept-ranges"] = true, ["expires"] = true, ["etag"] = true, ["server"] = true,
  ["date"] = true,
}

local function header_key(name)
  return lower((gsub(name, "_", "-")))
end

-- Set a response header, or clear it with nil; no checks.
local function store_header(key, display, value)
  if value == nil then
    if resp.headers[key] then
      resp.headers[key] = nil
      for i, k in ipairs(resp.order) do if k == key then remove(resp.order, i) break end end
    end
    return
  end
  if not resp.headers[key] then resp.order[#resp.order + 1] = key end
  resp.headers[key] = { name = display, value = value }
end

local function header_text(v)
  if type(v) == "number" then v = num2str(v) elseif type(v) ~= "string" then v = tostring(v) end
  return escape_header(v, UNSAFE_HEADER_VALUE)
end

local function set_response_header(name, value)
  if type(name) ~= "string" then name = type(name) == "number" and num2str(name) or tostring(name) end
  if resp.head_sent then
    prim.log(ERR, (prim.where(3) or "") .. "attempt to set ngx.header.HEADER after sending out response headers")
    return
  end
  local display = escape_header((gsub(name, "_", "-")), UNSAFE_HEADER_NAME)
  local key = lower(display)
  if key == "content-type" then resp.mime_set = true end
  if type(value) == "table" then
    local n = #value
    if n == 0 then value = nil
    elseif n == 1 or single_valued[key] then value = header_text(value[n])
    else
      local list = {}
      for i = 1, n do list[i] = header_text(value[i]) end
      value = list
    end
  elseif value ~= nil then
    value = header_text(value)
  end
  if value == "" then value = nil end
  if key == "content-length" and value and not find(value, "^%d+$") then
    error("failed to set header", 3)
  end
  store_header(key, display, value)
end

ngx.header = setmetatable({}, {
  __index = function(_, name)
    if type(name) ~= "string" then name = type(name) == "number" and num2str(name) or tostring(name) end
    local key = lower(escape_header(header_key(name), UNSAFE_HEADER_NAME))
    local entry = resp.headers[key]
    if not entry then return nil end
    local value = entry.value
    if type(value) == "table" then return { table.unpack(value) } end
    if key == "content-length" then return tonumber(value) end
    return value
  end,
  __newindex = function(_, name, value) set_response_header(name, value) end,
})

-- Lookups in header tables: any case, underscores for dashes.
local headers_mt = {
  __index = function(t, key)
    if type(key) ~= "string" then return nil end
    key = lower(key)
    local value = rawget(t, key)
    if value == nil and find(key, "_", 1, true) then value = rawget(t, (gsub(key, "_", "-"))) end
    return value
  end,
}

-- Add one header value to a headers table: a repeated name gets an array.
local function add_value(result, name, value)
  local existing = result[name]
  if existing == nil then result[name] = value
  elseif type(existing) == "table" then existing[#existing + 1] = value
  else result[name] = { existing, value } end
end

local function normalize_max(max, level)
  if max == nil then return 100 end
  local n = tonumber(max)
  if not n then error("bad argument #1 (number expected, got " .. type(max) .. ")", level + 1) end
  return floor(n)
end

ngx.resp = {}
function ngx.resp.get_headers(max_headers, raw)
  local max = normalize_max(max_headers, 2)
  local result, count = {}, 0
  if not raw then setmetatable(result, headers_mt) end
  for _, key in ipairs(resp.order) do
    local entry = resp.headers[key]
    local name, values = raw and entry.name or key, entry.value
    if type(values) ~= "table" then values = { values } end
    for _, v in ipairs(values) do
      if max > 0 and count >= max then return result, "truncated" end
      add_value(result, name, v)
      count = count + 1
    end
  end
  return result
end

local function error_page(status)
  local title = status .. " " .. (reasons[status] or "")
  return "<html>\r\n<head><title>" .. title .. "</title></head>\r\n<body>\r\n<center><h1>" .. title
    .. "</h1></center>\r\n<hr><center>moonwall</center>\r\n</body>\r\n</html>\r\n"
end

-- The headers of an error page (nginx's special response): Content-Type
-- text/html, no Content-Length; the script's other headers stay.
local function set_error_page_headers()
  store_header("content-length", "Content-Length", nil)
  store_header("content-type", "Content-Type", "text/html")
  resp.mime_set = true
end

-- ngx.exit(status) in the header filter: nginx finalizes the request with
-- that status instead (the response so far is dropped, later output too).
local function replace_response(status)
  if status == ngx.ERROR or status < 0 then
    filter_failure = { phase = "header_filter", message = "ngx.exit(" .. status .. ") in header_filter",
      traceback = "" }
    error(EXIT, 0)
  end
  resp.status = status
  resp.discard = true
  if status >= 300 and status ~= 304 then set_error_page_headers() end
end

send_headers = function()
  if resp.head_sent or resp.sending then return end
  resp.sending = true  -- the header filter may still change status and headers
  if resp.status == 0 then resp.status = 200 end
  if not resp.mime_set and not resp.headers["content-type"] and resp.status ~= 204 and resp.status ~= 304 then
    store_header("content-type", "Content-Type", DEFAULT_CONTENT_TYPE)
  end
  if handlers.header_filter then
    local previous = exit_status or ngx.OK
    filter_exit = nil
    local result = run_handler("header_filter", handlers.header_filter)
    if type(result) == "table" then
      filter_failure = result
      error(EXIT, 0)
    end
    if filter_exit and filter_exit ~= previous then replace_response(filter_exit) end
  end
  resp.head_sent = true
  local list = {}
  for _, key in ipairs(resp.order) do
    local entry = resp.headers[key]
    if type(entry.value) == "table" then
      for _, v in ipairs(entry.value) do list[#list + 1] = entry.name; list[#list + 1] = v end
    else
      list[#list + 1] = entry.name; list[#list + 1] = entry.value
    end
  end
  local ok, err = prim.send_head(resp.status, list)
  if not ok then error(err, 0) end
  if request.method == "HEAD" then resp.header_only = true end
  if resp.discard then
    -- the response the header filter's ngx.exit asked for
    if resp.status >= 300 and resp.status ~= 304 then pass(error_page(resp.status), true) end
    pass("", true)
  end
end

function ngx.send_headers()
  check_context(OUTPUT_PHASES, 2)
  if not resp.head_sent then send_headers() end
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
      if not status then error("bad argument to 'ngx.status' (number expected, got " .. type(value) .. ")", 2) end
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
  if status == ngx.AGAIN or status == ngx.DONE then
    error("bad argument to 'ngx.exit': does not accept NGX_AGAIN or NGX_DONE", 2)
  end
  check_context(EXIT_PHASES, 2)
  if resp.head_sent and status >= 300 and status ~= 408 and status ~= 444 and status ~= 499 then
    if status ~= resp.status then
      prim.log(ERR, (prim.where(2) or "") .. format("attempt to set status %d via ngx.exit after sending out"
        .. " the response status %d", status, resp.status))
    end
    status = ngx.HTTP_OK
  end
  if phase == "header_filter" then
    -- asynchronous there, as in OpenResty: the filter runs on
    filter_exit = status
    return
  end
  exit_status = status
  error(EXIT, 0)
end

local redirect_codes = { [301] = true, [302] = true, [303] = true, [307] = true, [308] = true }
function ngx.redirect(target, status)
  if type(target) == "number" then target = num2str(target) end
  if type(target) ~= "string" then
    error("bad argument #1 to 'redirect' (string expected, got " .. type(target) .. ")", 2)
  end
  status = status == nil and 302 or tonumber(status)
  if not redirect_codes[status] then
    error("only ngx.HTTP_MOVED_TEMPORARILY, ngx.HTTP_MOVED_PERMANENTLY, ngx.HTTP_PERMANENT_REDIRECT,"
      .. " ngx.HTTP_SEE_OTHER, and ngx.HTTP_TEMPORARY_REDIRECT are allowed", 2)
  end
  check_context(OUTPUT_PHASES, 2)
  if resp.head_sent then error("attempt to call ngx.redirect after sending out the headers", 2) end
  local bad, shown = unsafe_uri(target)
  if bad then error(format('unsafe byte "%s" in redirect uri "%s"', bad, shown), 2) end
  store_header("location", "Location", target)
  ngx.exit(status)
end

---------------------------------------------------------------------------
-- ngx.req
---------------------------------------------------------------------------

ngx.req = {}

function ngx.req.get_method() return method end

function ngx.req.set_method(code)
  if type(code) ~= "number" then error("bad method number", 2) end
  local name = method_names[code]
  if not name then error("unsupported HTTP method: " .. num2str(code), 2) end
  method = name
end

function ngx.req.http_version() return tonumber(request.http_version) end
function ngx.req.start_time() return floor(request.start_time * 1000) / 1000 end

function ngx.req.get_uri_args(max_args)
  return util.decode_args(query or "", normalize_max(max_args, 2))
end

function ngx.req.set_uri_args(args)
  local t = type(args)
  if t == "table" then args = util.encode_args(args)
  elseif t == "number" then args = num2str(args)
  elseif t ~= "string" then
    error("bad argument #1 to 'set_uri_args' (string, number, or table expected, but got " .. t .. ")", 2)
  end
  query = args
end

function ngx.req.set_uri(new_uri, jump, binary)
  if type(new_uri) == "number" then new_uri = num2str(new_uri) end
  if type(new_uri) ~= "string" then
    error("bad argument #1 to 'set_uri' (string expected, got " .. type(new_uri) .. ")", 2)
  end
  if new_uri == "" then error("attempt to use zero-length uri", 2) end
  if not binary then
    local bad, shown = unsafe_uri(new_uri)
    if bad then
      error(format("unsafe byte \"%s\" in uri \"%s\" (maybe you want to set the 'binary' argument?)",
        bad, shown), 2)
    end
  end
  if jump then
    check_context(REWRITE_PHASE, 2)
    error("ngx.req.set_uri with jump = true is not supported by moonwall (no internal redirects)", 2)
  end
  uri = new_uri
end

function ngx.req.read_body()
  check_context(OUTPUT_PHASES, 2)
  if body_state == "unread" then body_state = "read" end
end

function ngx.req.discard_body()
  check_context(OUTPUT_PHASES, 2)
  if body_state == "unread" then body_state = "discarded" end
end

function ngx.req.get_body_data()
  if body_state ~= "read" or #request.body == 0 then return nil end
  return request.body
end

function ngx.req.get_post_args(max_args)
  if body_state == "discarded" then return {} end
  if body_state ~= "read" then
    error("no request body found; maybe you should turn on lua_need_request_body?", 2)
  end
  return util.decode_args(request.body, normalize_max(max_args, 2))
end

-- The values of the request headers named `key` (lowercase): nil, one
-- string, or an array.
local function find_header(key)
  local values
  for _, h in ipairs(req_headers) do
    if h.key == key then
      if values == nil then values = h.value
      elseif type(values) == "table" then values[#values + 1] = h.value
      else values = { values, h.value } end
    end
  end
  return values
end

function ngx.req.get_headers(max_headers, raw)
  local max = normalize_max(max_headers, 2)
  local result, count = {}, 0
  if not raw then setmetatable(result, headers_mt) end
  for _, h in ipairs(req_headers) do
    if max > 0 and count >= max then return result, "truncated" end
    add_value(result, raw and h.name or h.key, h.value)
    count = count + 1
  end
  return result
end

local function header_name_arg(name, fname)
  if name == nil then error("bad argument #1 to '" .. fname .. "' (string expected, got nil)", 3) end
  if type(name) ~= "string" then name = type(name) == "number" and num2str(name) or tostring(name) end
  return escape_header(name, UNSAFE_HEADER_NAME)
end

local function clear_request_header(key)
  if key == "host" then host_header_set = true end
  for i = #req_headers, 1, -1 do
    if req_headers[i].key == key then remove(req_headers, i) end
  end
end

function ngx.req.clear_header(name)
  clear_request_header(lower(header_name_arg(name, "clear_header")))
end

function ngx.req.set_header(name, value)
  name = header_name_arg(name, "set_header")
  local key = lower(name)
  clear_request_header(key)
  if value == nil then return end
  local values = type(value) == "table" and value or { value }
  for i = 1, #values do
    local v = values[i]
    if type(v) == "number" then v = num2str(v) elseif type(v) ~= "string" then v = tostring(v) end
    req_headers[#req_headers + 1] = { name = name, key = key, value = escape_header(v, UNSAFE_HEADER_VALUE) }
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
    if k and lower(k) == name then return v end
  end
end

-- $http_NAME: the request headers whose lowercase name, with dashes read as
-- underscores, is NAME; repeated ones joined as nginx >= 1.23 does.
local function http_value(name)
  local values
  for _, h in ipairs(req_headers) do
    if h.key == name or gsub(h.key, "-", "_") == name then
      values = values and values .. ", " .. h.value or h.value
    end
  end
  return values
end

-- $sent_http_NAME: a response header as it was (or will be) sent.
local function sent_http_value(name)
  local entry = resp.headers[(gsub(name, "_", "-"))]
  if not entry then return nil end
  if type(entry.value) == "table" then return concat(entry.value, ", ") end
  return entry.value
end

-- $host: the host decided the request's host (the target's authority, else
-- the Host header; without its port, lowercase); once a script sets the Host
-- header, that header, as in ngx_lua.
local function host_value()
  if not host_header_set then return request.host end
  local host = find_header("host")
  if type(host) == "table" then host = host[1] end
  if not host or host == "" then return request.host end
  host = lower(host)
  if byte(host) == 91 then return (host:match("^(%[[^%]]*%])") or host) end  -- [v6]:port
  return (host:gsub(":%d*$", ""))
end

local builtin_vars = {
  uri = function() return uri end,
  document_uri = function() return uri end,
  args = function() if query ~= "" then return query end end,
  query_string = function() if query ~= "" then return query end end,
  is_args = function() return query ~= "" and "?" or "" end,
  request_uri = function() return request.request_uri end,
  request_method = function() return method end,
  host = host_value,
  server_name = function() return request.host end,
  hostname = function() return request.host end,
  scheme = function() return request.scheme end,
  https = function() return request.scheme == "https" and "on" or "" end,
  server_port = function() return tostring(request.server_port) end,
  ssl_protocol = function() if request.ssl_protocol ~= "" then return request.ssl_protocol end end,
  ssl_server_name = function() if request.ssl_server_name ~= "" then return request.ssl_server_name end end,
  remote_addr = function() return request.remote_addr end,
  remote_port = function() return tostring(request.remote_port) end,
  server_protocol = function() return "HTTP/" .. request.http_version end,
  request = function()
    return request.method .. " " .. request.request_uri .. " HTTP/" .. request.http_version
  end,
  content_type = function() return http_value("content_type") end,
  content_length = function() return http_value("content_length") end,
  request_body = function() if body_state == "read" and #request.body > 0 then return request.body end end,
  request_length = function() return tostring(#request.body) end,
  status = function() return tostring(resp.status) end,
  body_bytes_sent = function() return tostring(resp.body_bytes) end,
  request_time = function() return format("%.3f", prim.now() - request.start_time) end,
  msec = function() return format("%.3f", prim.now()) end,
}

ngx.var = setmetatable({}, {
  __index = function(_, name)
    if type(name) ~= "string" then error("bad variable name", 2) end
    name = lower(name)
    local builtin = builtin_vars[name]
    if builtin then return builtin() end
    local upstream = upstream_vars[name]
    if upstream then return upstream end
    if sub(name, 1, 5) == "http_" then return http_value(sub(name, 6)) end
    if sub(name, 1, 4) == "arg_" then return arg_value(sub(name, 5)) end
    if sub(name, 1, 7) == "cookie_" then return cookie_value(sub(name, 8)) end
    if sub(name, 1, 10) == "sent_http_" then return sent_http_value(sub(name, 11)) end
    return user_vars[name]
  end,
  __newindex = function(_, name, value)
    if type(name) ~= "string" then error("bad variable name", 2) end
    if value ~= nil and type(value) ~= "string" and type(value) ~= "number" then
      error("bad variable value", 2)
    end
    name = lower(name)
    if type(value) == "number" then value = num2str(value) end
    if name == "args" then query = value or "" return end
    if builtin_vars[name] or find(name, "^http_") or find(name, "^arg_") or find(name, "^cookie_")
        or find(name, "^sent_http_") then
      error(format('variable "%s" not changeable', name), 2)
    end
    user_vars[name] = value
  end,
})

---------------------------------------------------------------------------
-- time, strings, digests
---------------------------------------------------------------------------

local cached_now
function ngx.update_time() cached_now = prim.now() end
function ngx.now() return floor(cached_now * 1000) / 1000 end
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
  if type(v) == "number" then return num2str(v) end
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
  if no_padding ~= nil and type(no_padding) ~= "boolean" then
    error("bad argument #2 to 'encode_base64' (boolean expected, got " .. type(no_padding) .. ")", 2)
  end
  return prim.b64enc(string_arg(s, "encode_base64"), no_padding == true)
end
function ngx.decode_base64(s)
  if type(s) ~= "string" then error("string argument only", 2) end
  return prim.b64dec(s)
end

---------------------------------------------------------------------------
-- waiting: ngx.sleep, light threads, subrequests (lua/tasks.lua)
---------------------------------------------------------------------------

tasks.log_error = function(message) prim.log(ERR, message) end
ngx.sleep = tasks.sleep
ngx.thread = tasks.thread

local function capture_request(uri, options, fname)
  if type(uri) ~= "string" then
    error(format("bad argument #1 to '%s' (string expected, got %s)", fname, type(uri)), 3)
  end
  if sub(uri, 1, 1) ~= "/" then error(format("%s: uri must start with '/': %s", fname, uri), 3) end
  options = options or {}
  if type(options) ~= "table" then error(fname .. ": options must be a table", 3) end
  local path, args = uri, ""
  local q = find(uri, "?", 1, true)
  if q then path, args = sub(uri, 1, q - 1), sub(uri, q + 1) end
  if options.args ~= nil then
    local extra = options.args
    if type(extra) == "table" then extra = util.encode_args(extra) end
    if type(extra) ~= "string" then error(fname .. ": args must be a string or a table", 3) end
    args = args ~= "" and extra ~= "" and (args .. "&" .. extra) or (args .. extra)
  end
  local code = options.method or ngx.HTTP_GET
  local name = method_names[code]
  if not name then error(format("%s: unsupported method %s", fname, tostring(code)), 3) end
  local body = options.body
  if body == nil and (name == "POST" or name == "PUT") then body = request.body end
  if type(body) ~= "string" then body = body == nil and "" or error(fname .. ": body must be a string", 3) end
  -- nginx subrequests inherit the parent request's headers
  local headers = {}
  for _, h in ipairs(req_headers) do
    headers[#headers + 1] = h.name
    headers[#headers + 1] = h.value
  end
  return { method = name, uri = path, args = args, headers = headers, body = body }
end

-- Subrequest response headers arrive lowercase: look them up in any case.
local capture_header_mt = {
  __index = function(t, name)
    if type(name) == "string" then return rawget(t, lower(name)) end
  end,
}

local function capture_response(r)
  local header = setmetatable({}, capture_header_mt)
  local h = r.headers
  for i = 1, #h, 2 do
    local name, value = h[i], h[i + 1]
    local old = header[name]
    if old == nil then
      header[name] = value
    elseif type(old) == "table" then
      old[#old + 1] = value
    else
      header[name] = { old, value }
    end
  end
  return { status = r.status, header = header, body = r.body, truncated = r.truncated }
end

ngx.location = {}
function ngx.location.capture(uri, options)
  local results, err = tasks.capture_all({ capture_request(uri, options, "capture") })
  if not results then error("ngx.location.capture: " .. err, 2) end
  return capture_response(results[1])
end

function ngx.location.capture_multi(list)
  if type(list) ~= "table" or #list == 0 then
    error("bad argument #1 to 'capture_multi' (a non-empty table of requests expected)", 2)
  end
  local requests = {}
  for i, item in ipairs(list) do
    if type(item) ~= "table" then error("capture_multi: request " .. i .. " is not a table", 2) end
    requests[i] = capture_request(item[1], item[2], "capture_multi")
  end
  local results, err = tasks.capture_all(requests)
  if not results then error("ngx.location.capture_multi: " .. err, 2) end
  for i = 1, #results do results[i] = capture_response(results[i]) end
  return unpack(results, 1, #results)
end

---------------------------------------------------------------------------
-- the phase runner
---------------------------------------------------------------------------

-- End the request with `status`, as nginx finalizes it.
local function finalize(status)
  if status == ngx.OK or resp.head_sent then
    finish_response()
    return
  end
  if status < 0 then status = 500 end
  resp.status = status
  if status >= 300 and status ~= 304 then
    set_error_page_headers()
    send_headers()
    pass(error_page(status), true)
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

-- A proxied location's content phase (nginx's proxy_pass): the request as
-- the earlier phases left it goes to the upstream; its answer comes back
-- through the header filter, then chunk by chunk through the body filter.
-- The host picks the peer, adds the forwarding headers and times every
-- wait; a failure before the head is 502 or 504.
local HOP_BY_HOP = {
  connection = true, ["keep-alive"] = true, ["proxy-connection"] = true, te = true,
  trailer = true, ["transfer-encoding"] = true, upgrade = true, ["content-length"] = true,
}
-- ngx.balancer (OpenResty's lua-resty-core module), for a proxied
-- location's balancer script: it runs before each try and picks the peer
-- among the upstream's (the host refuses any other).
local BALANCER_PHASE = { balancer = true }
local balancer = { peer = nil, more = 0, failure = nil, status = nil, timeouts = nil }
local balancer_api = {}

function balancer_api.set_current_peer(host, port)
  check_context(BALANCER_PHASE, 2)
  if type(host) ~= "string" then
    error("bad argument #1 to 'set_current_peer' (string expected, got " .. type(host) .. ")", 2)
  end
  if port == nil then
    local h, p = match(host, "^(.*):(%d+)$")
    if not h then return nil, "no port in the peer address" end
    host, port = h, p
  end
  port = tonumber(port)
  if not port or port < 1 or port > 65535 or port % 1 ~= 0 then return nil, "invalid port" end
  if find(host, ":", 1, true) and sub(host, 1, 1) ~= "[" then host = "[" .. host .. "]" end
  balancer.peer = host .. ":" .. format("%d", port)
  return true
end

function balancer_api.set_more_tries(count)
  check_context(BALANCER_PHASE, 2)
  count = tonumber(count)
  if not count or count < 0 or count % 1 ~= 0 then error("bad argument #1 to 'set_more_tries' (count expected)", 2) end
  balancer.more = count
  return true
end

function balancer_api.get_last_failure()
  check_context(BALANCER_PHASE, 2)
  return balancer.failure, balancer.status
end

function balancer_api.set_timeouts(connect, send, read)
  check_context(BALANCER_PHASE, 2)
  local function ms(v, n)
    if v == nil then return 0xffffffff end  -- the upstream's
    v = tonumber(v)
    if not v or v <= 0 then error("bad argument #" .. n .. " to 'set_timeouts' (positive number expected)", 3) end
    return floor(v * 1000 + 0.5)
  end
  balancer.timeouts = { connect = ms(connect, 1), send = ms(send, 2), read = ms(read, 3) }
  return true
end

package.preload["ngx.balancer"] = function() return balancer_api end

-- The balancer script's pick for the next try: the peer ("ip:port"), or nil
-- for the host's own turn; raises the script's error.
local function balance()
  balancer.peer = nil
  local result = run_handler("balancer", handlers.balancer)
  if type(result) == "table" then
    filter_failure = result
    error(EXIT, 0)
  end
  if result == "exit" then error(EXIT, 0) end
  return balancer.peer
end

local function proxy_content()
  local target
  if uri == request.uri and query == request.query then
    target = request.request_uri
  else
    target = util.escape_uri(uri, 0)
    if query ~= "" then target = target .. "?" .. query end
  end
  local headers = {}
  for _, h in ipairs(req_headers) do
    if not HOP_BY_HOP[h.key] then
      headers[#headers + 1] = h.name
      headers[#headers + 1] = h.value
    end
  end
  local body = body_state == "discarded" and "" or request.body
  local op, err, head, message, status, addr, retry
  local tried = {}
  while true do
    local peer = handlers.balancer and balance() or nil
    op, err = prim.proxy_send(method, target, headers, body, peer, balancer.timeouts)
    if not op then error(err, 0) end
    tasks.await(op)
    head, message, status, addr, retry = prim.proxy_finish_send(op)
    if head or not (retry and handlers.balancer and balancer.more > 0) then break end
    -- the peer could not be reached: the balancer picks again
    if addr ~= "" then tried[#tried + 1] = addr end
    prim.log(ERR, "upstream: " .. message .. " (trying another peer)")
    balancer.more = balancer.more - 1
    balancer.failure, balancer.status = "failed", status
  end
  if head and #tried > 0 then head.addr = concat(tried, ", ") .. ", " .. head.addr end
  if not head then
    if addr ~= "" then tried[#tried + 1] = addr end
    addr = concat(tried, ", ")
    upstream_vars.upstream_addr = addr ~= "" and addr or nil
    upstream_vars.upstream_status = status == 504 and "504" or "502"
    prim.log(ERR, "upstream: " .. message)
    return ngx.exit(status)
  end
  upstream_vars.upstream_addr = head.addr
  upstream_vars.upstream_status = tostring(head.status)
  upstream_vars.upstream_connect_time = format("%.3f", head.connect_ms / 1000)
  upstream_vars.upstream_header_time = format("%.3f", head.header_ms / 1000)
  resp.status = head.status
  -- the upstream's headers as they are (a repeated name keeps every value);
  -- no default Content-Type is added to an answer without one
  local list, grouped, order = head.headers, {}, {}
  for i = 1, #list, 2 do
    local key = lower(list[i])
    local values = grouped[key]
    if values then values[#values + 1] = list[i + 1]
    else grouped[key] = { list[i + 1] }; order[#order + 1] = list[i] end
  end
  for _, name in ipairs(order) do set_response_header(name, grouped[lower(name)]) end
  resp.mime_set = true
  send_headers()
  while true do
    op, err = prim.proxy_read()
    if not op then error(err, 0) end
    tasks.await(op)
    local chunk
    chunk, message = prim.proxy_finish_read(op)
    if chunk == nil then
      -- the head went out: the response can only be cut short
      error("upstream: " .. message, 0)
    end
    if chunk == false then break end
    if not resp.header_only and not resp.discard then
      resp.seen_body = true
      pass(chunk, false)
      flush_buffer()
    end
  end
  upstream_vars.upstream_response_time = format("%.3f", prim.now() - proxy_started)
end

local function compile(sources)
  for _, name in ipairs({ "rewrite", "access", "content", "header_filter", "body_filter", "log", "balancer" }) do
    local source = sources[name]
    if source then
      -- loaded by glue/http.c: text, or the host's own bytecode
      local fn, err = source.fn, source.err
      if not fn then return { phase = name, message = err, traceback = "" } end
      handlers[name] = fn
    end
  end
end

local function begin(req)
  request = req
  method = req.method
  uri, query = req.uri, req.query
  for i, h in ipairs(req.headers) do req_headers[i] = { name = h.name, key = lower(h.name), value = h.value } end
  host_header_set = false
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
      elseif resp.head_sent then
        -- the response has begun: later phases may not start another one
        outcome = guarded(finish_response) or "done"
      end
    end
  end

  if not outcome then
    if not handlers.content and prim.proxied() then
      proxy_started = prim.now()
      handlers.content = proxy_content
    end
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

  -- what was produced before a failure still goes out (then the host cuts the response)
  if type(outcome) == "table" and resp.head_sent then raw_pcall(flush_buffer) end
  phase = "log"
  run_log_phase()
  if type(outcome) == "table" then return outcome end
end

-- Only the log phase, after a limit stopped the request's own instance.
local function log_only(req, source, status)
  begin(req)
  resp.head_sent, resp.eof, resp.closed, resp.status = true, true, true, status
  local fn, err = source.fn, source.err
  if not fn then
    prim.log(ERR, "log phase: " .. err)
    return
  end
  handlers.log = fn
  phase = "log"
  run_log_phase()
end

-- A tenant's init script (OpenResty's init_by_lua), run once in the prepared
-- state before it is snapshotted: what it leaves (globals, required modules)
-- is where every request of the tenant starts. No request exists yet: the
-- request API, output, ngx.exit and waiting are disabled, as in OpenResty.
local function init(source)
  _G.ngx = ngx
  local fn, err = source.fn, source.err
  if not fn then return { message = err, traceback = "" } end
  phase = "init"
  local ok, failure = raw_xpcall(fn, message_handler)
  if not ok and tasks.busy() then tasks.kill_all() end
  -- each request gets its own ngx.ctx
  rawset(ngx, "ctx", nil)
  if ok then return nil end
  if failure == EXIT then
    return { message = "ngx.exit: API disabled in the context of init_by_lua*", traceback = "" }
  end
  return failure
end

return { serve = serve, log_only = log_only, init = init }
