-- resty.http: an HTTP/1.1 client over ngx.socket.tcp, with the API of
-- lua-resty-http (new, connect, request, request_uri, set_keepalive, ...),
-- written for moonwall.
--
-- Pure Lua: the host checks the destination, the addresses, the bytes
-- received and the time of every connection, as for any cosocket. https
-- URIs make the connection TLS (sock:sslhandshake): the certificate is
-- verified unless ssl_verify = false, which the policy must grant.

local socket = require("ngx.socket")

local type, tostring, tonumber, pairs, ipairs, setmetatable, rawget, rawset, select =
  type, tostring, tonumber, pairs, ipairs, setmetatable, rawget, rawset, select
local byte, find, format, gsub, lower, match, sub =
  string.byte, string.find, string.format, string.gsub, string.lower, string.match, string.sub
local concat, sort, unpack = table.concat, table.sort, table.unpack

-- Bytes read per body chunk unless the reader is asked for another size.
local DEFAULT_CHUNK = 65536
local MAX_HEADERS = 1000

local _M = { _VERSION = "moonwall" }
local mt = { __index = _M }

---------------------------------------------------------------------------
-- headers: names are case-insensitive, the first spelling is kept
---------------------------------------------------------------------------

local function new_headers()
  local spelled = {} -- lowercased name -> the name as first set
  return setmetatable({}, {
    __index = function(t, name)
      if type(name) ~= "string" then return nil end
      local key = spelled[lower(name)]
      return key and rawget(t, key)
    end,
    __newindex = function(t, name, value)
      if type(name) ~= "string" then
        rawset(t, name, value)
        return
      end
      local low = lower(name)
      local key = spelled[low]
      if not key then
        key = name
        spelled[low] = name
      end
      rawset(t, key, value)
    end,
  })
end
_M.new_headers = new_headers

---------------------------------------------------------------------------
-- URIs and query strings
---------------------------------------------------------------------------

local function escape(text)
  return (gsub(text, "[^%w%-%._~]", function(c) return format("%%%02X", byte(c)) end))
end

local function encode_query(args)
  local names = {}
  for name in pairs(args) do
    if type(name) == "string" or type(name) == "number" then names[#names + 1] = tostring(name) end
  end
  sort(names)
  local out = {}
  for _, name in ipairs(names) do
    local value = args[name]
    if value == nil then value = args[tonumber(name)] end
    local values = type(value) == "table" and value or { value }
    for _, v in ipairs(values) do
      if v == true then
        out[#out + 1] = escape(name)
      elseif v ~= false and v ~= nil then
        out[#out + 1] = escape(name) .. "=" .. escape(tostring(v))
      end
    end
  end
  return concat(out, "&")
end

-- parse_uri(uri, query_in_path = true) -> {scheme, host, port, path, query}
function _M.parse_uri(_, uri, query_in_path)
  if type(uri) ~= "string" then return nil, "bad uri: " .. tostring(uri) end
  if query_in_path == nil then query_in_path = true end
  local scheme, rest = match(uri, "^(%a[%w+.-]*)://(.*)$")
  if not scheme then
    rest = match(uri, "^//(.*)$")
    if not rest then return nil, "bad uri: " .. uri end
    scheme = "http"
  end
  scheme = lower(scheme)
  if scheme ~= "http" and scheme ~= "https" then return nil, "bad uri: " .. uri end
  local authority, tail = match(rest, "^([^/?#]*)(.*)$")
  if find(authority, "@", 1, true) then
    return nil, "bad uri (credentials in the uri are not supported): " .. uri
  end
  local host, port
  if sub(authority, 1, 1) == "[" then
    host, port = match(authority, "^(%[[%x:.]+%])(.*)$")
  else
    host, port = match(authority, "^([^:]+)(.*)$")
  end
  if not host or host == "" then return nil, "bad uri: " .. uri end
  if port == "" then
    port = scheme == "https" and 443 or 80
  else
    port = match(port, "^:(%d+)$")
    port = port and tonumber(port)
    if not port or port < 1 or port > 65535 then return nil, "bad uri: " .. uri end
  end
  tail = gsub(tail, "#.*$", "")
  local path, query = match(tail, "^([^?]*)%??(.*)$")
  if path == "" then path = "/" end
  if query_in_path and query ~= "" then
    path = path .. "?" .. query
    query = ""
  end
  return { scheme, host, port, path, query }
end

---------------------------------------------------------------------------
-- the client
---------------------------------------------------------------------------

function _M.new()
  return setmetatable({ sock = socket.tcp(), keepalive = true }, mt)
end

function _M.set_timeout(self, ms)
  self.sock:settimeout(ms)
end

function _M.set_timeouts(self, connect, send, read)
  self.sock:settimeouts(connect, send, read)
end

-- connect(options) with options {scheme, host, port, pool, pool_size, ...},
-- or connect(host, port, socket_options).
function _M.connect(self, options, ...)
  local sock = self.sock
  if type(options) ~= "table" then
    local host, port = options, ...
    self.host, self.port, self.scheme = host, port, "http"
    self.keepalive, self.response_done = true, true
    return sock:connect(host, port, (select(2, ...)))
  end
  local scheme = options.scheme or "http"
  if scheme ~= "http" and scheme ~= "https" then
    return nil, "unsupported scheme: " .. tostring(scheme)
  end
  if options.proxy_opts then return nil, "proxies are not supported" end
  local host = options.host
  if type(host) ~= "string" then return nil, "no host given" end
  local ssl = scheme == "https"
  local port = options.port or (ssl and 443 or 80)
  local ssl_verify, ssl_server_name = true, nil
  if ssl then
    if options.ssl_verify == false then ssl_verify = false end
    ssl_server_name = options.ssl_server_name
    if ssl_server_name ~= nil and type(ssl_server_name) ~= "string" then
      return nil, "bad ssl_server_name: string expected, got " .. type(ssl_server_name)
    end
  end
  local pool = options.pool
  if pool == nil and ssl then
    -- As lua-resty-http: a TLS connection is reused only for the same
    -- server name and verification.
    pool = format("%s:%s:%s:%s:%s", scheme, host, tostring(port), ssl_server_name or host,
      tostring(ssl_verify))
  end
  self.host, self.port, self.scheme = host, port, scheme
  self.keepalive, self.response_done = true, true
  local ok, err = sock:connect(host, port, { pool = pool, pool_size = options.pool_size })
  if not ok then return nil, err end
  if ssl then
    -- On a connection from the pool that is TLS for the same server name
    -- and verification already, the host makes no new handshake.
    ok, err = sock:sslhandshake(false, ssl_server_name or host, ssl_verify)
    if not ok then return nil, err end
  end
  return true
end

-- ssl_handshake(reused_session, server_name, ssl_verify): the socket's
-- sslhandshake, for a client connected with connect(host, port).
function _M.ssl_handshake(self, ...)
  return self.sock:sslhandshake(...)
end

function _M.get_reused_times(self)
  return self.sock:getreusedtimes()
end

function _M.close(self)
  return self.sock:close()
end

-- set_keepalive(timeout?, size?): back to the pool if the last response was
-- read to its end and the server keeps the connection; else closed (2).
function _M.set_keepalive(self, ...)
  if self.keepalive and self.response_done then
    return self.sock:setkeepalive(...)
  end
  local ok, err = self.sock:close()
  if ok then return 2, "connection must be closed" end
  return ok, err
end

local function bad_text(text)
  return find(text, "[\r\n%z]") ~= nil
end

-- The request's head, and how to send its body.
local function request_head(self, params)
  local method = params.method or "GET"
  if type(method) ~= "string" or not match(method, "^[%w!#$%%&'*+.^_`|~-]+$") then
    return nil, "bad method"
  end
  local path = params.path or "/"
  if type(path) ~= "string" or find(path, "[%s%z]") then return nil, "bad path" end
  local query = params.query
  if type(query) == "table" then query = encode_query(query) end
  if query ~= nil and query ~= "" then
    if type(query) ~= "string" or find(query, "[%s%z]") then return nil, "bad query" end
    if sub(query, 1, 1) == "?" then query = sub(query, 2) end
    path = path .. "?" .. query
  end
  local version = params.version or 1.1
  if version ~= 1.0 and version ~= 1.1 then return nil, "bad version" end

  local headers = new_headers()
  for name, value in pairs(params.headers or {}) do
    headers[name] = value
  end
  if headers["Host"] == nil and self.host then
    local host, port = self.host, tonumber(self.port)
    if find(host, ":", 1, true) and sub(host, 1, 1) ~= "[" then host = "[" .. host .. "]" end
    local default_port = self.scheme == "https" and 443 or 80
    if port and port ~= default_port then host = host .. ":" .. port end
    headers["Host"] = host
  end
  if headers["User-Agent"] == nil then headers["User-Agent"] = "lua-resty-http (moonwall)" end

  local body = params.body
  if type(body) == "table" then
    local parts = {}
    for i = 1, #body do parts[i] = tostring(body[i]) end
    body = concat(parts)
  end
  local chunked = false
  if type(body) == "string" then
    if headers["Content-Length"] == nil then headers["Content-Length"] = #body end
  elseif type(body) == "function" then
    if headers["Content-Length"] == nil then
      chunked = true
      headers["Transfer-Encoding"] = "chunked"
    end
  elseif body == nil then
    if headers["Content-Length"] == nil and (method == "POST" or method == "PUT" or method == "PATCH") then
      headers["Content-Length"] = 0
    end
  else
    return nil, "bad body: " .. type(body)
  end

  local lines = { method .. " " .. path .. " HTTP/" .. (version == 1.0 and "1.0" or "1.1") }
  for name, value in pairs(headers) do
    if type(name) == "string" then
      local values = type(value) == "table" and value or { value }
      for _, v in ipairs(values) do
        v = tostring(v)
        if name == "" or find(name, "[:%s%z]") or bad_text(v) then
          return nil, "bad header: " .. name
        end
        lines[#lines + 1] = name .. ": " .. v
      end
    end
  end
  lines[#lines + 1] = "\r\n"
  return concat(lines, "\r\n"), body, chunked, method
end

local function send_body(sock, body, chunked)
  if type(body) ~= "function" then return true end
  while true do
    local chunk, err = body()
    if err then return nil, err end
    if chunk == nil then break end
    chunk = tostring(chunk)
    if #chunk > 0 then
      local ok, send_err
      if chunked then
        ok, send_err = sock:send({ format("%x\r\n", #chunk), chunk, "\r\n" })
      else
        ok, send_err = sock:send(chunk)
      end
      if not ok then return nil, send_err end
    end
  end
  if chunked then
    local ok, err = sock:send("0\r\n\r\n")
    if not ok then return nil, err end
  end
  return true
end

-- Read header lines up to the empty line into `headers`.
local function read_headers(sock, headers)
  for _ = 1, MAX_HEADERS do
    local line, err = sock:receive("*l")
    if not line then return nil, err end
    if line == "" then return true end
    local name, value = match(line, "^([^:%s]+)%s*:%s*(.-)%s*$")
    if name then
      local old = headers[name]
      if old == nil then
        headers[name] = value
      elseif type(old) == "table" then
        old[#old + 1] = value
      else
        headers[name] = { old, value }
      end
    end
  end
  return nil, "too many headers (more than " .. MAX_HEADERS .. ")"
end

local function has_token(value, token)
  if type(value) == "table" then value = concat(value, ",") end
  if type(value) ~= "string" then return false end
  for item in value:gmatch("[^,]+") do
    if lower(match(item, "^%s*(.-)%s*$")) == token then return true end
  end
  return false
end

-- The body reader of a response: iterator(max_chunk_size?) -> chunk | nil
-- at the end | nil, err.
local function body_reader(self, res, framing, length)
  local sock = self.sock
  local left = length      -- Content-Length: bytes left
  local chunk_left = 0     -- chunked: bytes left in the current chunk
  local done = false
  local function finish()
    done = true
    self.response_done = framing ~= "close"
  end
  return function(max)
    if done then return nil end
    max = tonumber(max)
    if not max or max <= 0 then max = DEFAULT_CHUNK end
    if framing == "length" then
      if left == 0 then finish() return nil end
      local data, err = sock:receive(left < max and left or max)
      if not data then done = true return nil, err end
      left = left - #data
      return data
    elseif framing == "close" then
      local data, err, partial = sock:receive(max)
      if data then return data end
      done = true
      if err == "closed" then
        self.keepalive = false
        if partial and partial ~= "" then return partial end
        return nil
      end
      return nil, err
    end
    -- chunked
    if chunk_left == 0 then
      local line, err = sock:receive("*l")
      if not line then done = true return nil, err end
      local hex = match(line, "^%s*(%x+)%s*[;]?")
      if not hex or #hex > 15 then done = true return nil, "bad chunk size: " .. line end
      chunk_left = tonumber(hex, 16)
      if chunk_left == 0 then
        local trailers = new_headers()
        local ok, trailer_err = read_headers(sock, trailers)
        if not ok then done = true return nil, trailer_err end
        res.trailers = trailers
        finish()
        return nil
      end
    end
    local data, err = sock:receive(chunk_left < max and chunk_left or max)
    if not data then done = true return nil, err end
    chunk_left = chunk_left - #data
    if chunk_left == 0 then
      local crlf, crlf_err = sock:receive("*l")
      if crlf ~= "" then
        done = true
        return nil, crlf_err or "bad chunk end"
      end
    end
    return data
  end
end

-- request(params) -> res | nil, err
function _M.request(self, params)
  params = params or {}
  local sock = self.sock
  local head, body, chunked, method = request_head(self, params)
  if not head then return nil, body end
  self.response_done = false
  local ok, err
  if type(body) == "string" then
    ok, err = sock:send({ head, body })
  else
    ok, err = sock:send(head)
    if ok then ok, err = send_body(sock, body, chunked) end
  end
  if not ok then return nil, err end

  local status, version, reason, headers
  repeat
    local line, line_err = sock:receive("*l")
    if not line then return nil, line_err end
    version, status, reason = match(line, "^HTTP/(%d%.%d) (%d%d%d) ?(.*)$")
    if not status then return nil, "bad status line: " .. sub(line, 1, 100) end
    status = tonumber(status)
    headers = new_headers()
    local got, header_err = read_headers(sock, headers)
    if not got then return nil, header_err end
    -- Interim responses (100 Continue...) come before the real one.
  until status >= 200 or status == 101

  local res = { status = status, reason = reason, headers = headers }
  local connection = headers["Connection"]
  if version == "1.0" then
    self.keepalive = has_token(connection, "keep-alive")
  else
    self.keepalive = not has_token(connection, "close")
  end

  res.has_body = not (method == "HEAD" or status < 200 or status == 204 or status == 304)
  local framing, length = nil, nil
  if res.has_body then
    if has_token(headers["Transfer-Encoding"], "chunked") then
      framing = "chunked"
    elseif headers["Content-Length"] ~= nil then
      local value = headers["Content-Length"]
      if type(value) == "table" then
        for i = 2, #value do
          if value[i] ~= value[1] then return nil, "conflicting Content-Length headers" end
        end
        value = value[1]
      end
      if not match(value, "^%d+$") or #value > 15 then return nil, "bad Content-Length: " .. value end
      framing, length = "length", tonumber(value)
    else
      framing = "close"
      self.keepalive = false
    end
  end
  if framing then
    res.body_reader = body_reader(self, res, framing, length)
  else
    self.response_done = true
    res.body_reader = function() return nil end
  end
  res.read_body = function()
    local parts = {}
    while true do
      local chunk, read_err = res.body_reader()
      if read_err then return nil, read_err end
      if not chunk then break end
      parts[#parts + 1] = chunk
    end
    return concat(parts)
  end
  res.read_trailers = function()
    for name, value in pairs(res.trailers or {}) do
      if type(name) == "string" then headers[name] = value end
    end
  end
  return res
end

-- request_uri(uri, params) -> res (with its body) | nil, err
function _M.request_uri(self, uri, params)
  params = params or {}
  local parsed, err = self:parse_uri(uri, false)
  if not parsed then return nil, err end
  local scheme, host, port, path, query = unpack(parsed)
  if params.path == nil then params.path = path end
  if params.query == nil then params.query = query end
  local connect_host = host
  if sub(host, 1, 1) == "[" then connect_host = sub(host, 2, -2) end
  local ok, connect_err = self:connect({
    scheme = scheme, host = connect_host, port = port, pool = params.pool,
    ssl_verify = params.ssl_verify, ssl_server_name = params.ssl_server_name,
  })
  if not ok then return nil, connect_err end
  if params.keepalive == false then
    local headers = new_headers()
    for name, value in pairs(params.headers or {}) do headers[name] = value end
    headers["Connection"] = "close"
    params.headers = headers
  end
  local res, req_err = self:request(params)
  if not res then
    self:close()
    return nil, req_err
  end
  local body, body_err = res:read_body()
  if not body then
    self:close()
    return nil, body_err
  end
  res.body = body
  if params.keepalive == false then
    self:close()
  else
    self:set_keepalive(params.keepalive_timeout, params.keepalive_pool)
  end
  return res
end

return _M
