-- ngx.socket: OpenResty's cosockets (ngx.socket.tcp, ngx.socket.connect)
-- over wit/tcp.wit.
--
-- The host makes every check (the policy's destinations, the addresses a
-- name resolves to, the bounds on connections, sockets, bytes and time); this
-- module only gives scripts OpenResty's shapes. Each I/O call starts an
-- operation on the host and waits for it through moonwall.tasks, so that
-- light threads' I/O overlaps. Allowed in every phase.

local _, prim = ...

local tasks = require("moonwall.tasks")

local type, tostring, tonumber, error, setmetatable, getmetatable =
  type, tostring, tonumber, error, setmetatable, getmetatable
local mtype, floor, huge = math.type, math.floor, math.huge
local concat = table.concat
local format = string.format

local M = {}


local function bad_arg(n, fname, message)
  error(format("bad argument #%d to '%s' (%s)", n, fname, message), 3)
end

-- A timeout in milliseconds, as settimeout takes it: nil, or a number >= 0
-- (0: the policy's). The host caps every timeout by the policy's.
local function check_ms(value, n, fname)
  if value == nil then return nil end
  if type(value) ~= "number" or value ~= value or value < 0 then
    bad_arg(n, fname, "bad timeout value")
  end
  if value == huge or value > 0xffffffff then return 0xffffffff end
  return floor(value)
end

local tcp = {}
tcp.__index = tcp

-- Start an operation with `start(...)`, wait for it, collect it with
-- `finish`. The socket is busy meanwhile (the host refuses a second
-- operation on it too). When the host refuses to start it: nil, err, nil,
-- true (the connection is untouched).
local function run(self, start, finish, ...)
  local op, err = start(...)
  if not op then return nil, err, nil, true end
  self.busy = true
  tasks.await(op)
  self.busy = false
  return finish(op)
end

-- The socket has no connection any more: free its slot on the host (the
-- policy bounds the sockets open at once).
local function release(self)
  self.connected = false
  local id = self.id
  if id then
    self.id = nil
    prim.close(id)
  end
end
tcp.__gc = release

-- ngx.socket.tcp(): a new socket, not connected.
function M.tcp()
  return setmetatable({ reused = 0 }, tcp)
end
M.stream = M.tcp

function tcp:connect(host, port, options)
  if type(self) ~= "table" or getmetatable(self) ~= tcp then
    error("bad argument #1 to 'connect' (tcp socket expected)", 2)
  end
  if type(host) ~= "string" then bad_arg(1, "connect", "string expected, got " .. type(host)) end
  if host:sub(1, 5) == "unix:" then
    return nil, "unix domain sockets are not available in moonwall"
  end
  if type(port) == "string" then port = tonumber(port) end
  if mtype(port) ~= "integer" and not (type(port) == "number" and port == floor(port)) then
    bad_arg(2, "connect", "number expected, got " .. type(port))
  end
  if port < 0 or port > 65535 then
    return nil, "bad port number: " .. tostring(port)
  end
  local pool
  if options ~= nil then
    if type(options) ~= "table" then bad_arg(3, "connect", "table expected, got " .. type(options)) end
    pool = options.pool
    if pool ~= nil and type(pool) ~= "string" then
      bad_arg(3, "connect", "bad \"pool\" option type: " .. type(pool))
    end
  end
  if self.busy then return nil, "socket busy" end
  if not self.id then
    local id, err = prim.open()
    if not id then return nil, err end
    self.id = id
  end
  local reused, err = run(self, prim.connect, prim.finish_connect, self.id, host, floor(port),
    pool, self.connect_timeout)
  if not reused then
    release(self)
    return nil, err
  end
  self.connected = true
  self.reused = reused
  return 1
end

-- A TLS session as sslhandshake returns it: moonwall keeps sessions on the
-- host (per tenant), so this only stands for one.
local session_mt = { __name = "ssl session", __tostring = function() return "ssl session" end }

-- sslhandshake(reused_session?, server_name?, ssl_verify?, send_status_req?):
-- the connection becomes TLS. The certificate is verified unless ssl_verify
-- is false (which the policy must grant: outbound_tls_no_verify); nil
-- verifies too (OpenResty's default is not to). reused_session and
-- send_status_req are accepted and ignored (no client-side session objects,
-- no OCSP). A connection from the keepalive pool that is TLS for the same
-- server name and verification needs no handshake.
function tcp:sslhandshake(reused_session, server_name, ssl_verify, send_status_req)
  if type(self) ~= "table" or getmetatable(self) ~= tcp then
    error("bad argument #1 to 'sslhandshake' (tcp socket expected)", 2)
  end
  if server_name == false then server_name = nil end
  if server_name ~= nil and type(server_name) ~= "string" then
    bad_arg(2, "sslhandshake", "string expected, got " .. type(server_name))
  end
  local verify = true
  if ssl_verify ~= nil then verify = ssl_verify and true or false end
  local _ = send_status_req
  if self.busy then return nil, "socket busy" end
  if not self.id or not self.connected then return nil, "closed" end
  local reused, err, _, refused = run(self, prim.sslhandshake, prim.finish_sslhandshake, self.id,
    server_name, verify, self.connect_timeout)
  if not reused then
    if not refused then release(self) end
    return nil, err
  end
  -- 0 if a new connection was made for another server name or verification
  self.reused = reused
  if reused_session == false then return true end
  return setmetatable({}, session_mt)
end

-- send(data): data a string, a number, or an array (nested) of them.
local function flatten(value, out, depth)
  local t = type(value)
  if t == "string" then
    out[#out + 1] = value
  elseif t == "number" then
    out[#out + 1] = tostring(value)
  elseif t == "table" then
    if depth > 100 then error("send: table nested too deep", 4) end
    for i = 1, #value do flatten(value[i], out, depth + 1) end
  elseif t == "boolean" then
    out[#out + 1] = value and "true" or "false"
  else
    error(format("bad argument #1 to 'send' (bad data type %s found)", t), 4)
  end
end

function tcp:send(data)
  local t = type(data)
  if t ~= "string" then
    if t == "number" then
      data = tostring(data)
    elseif t == "table" then
      local out = {}
      flatten(data, out, 0)
      data = concat(out)
    elseif t == "boolean" then
      data = data and "true" or "false"
    elseif t == "nil" then
      data = "nil"
    else
      error(format("bad argument #1 to 'send' (string, number, boolean, nil or array table expected, got %s)",
        t), 2)
    end
  end
  if self.busy then return nil, "socket busy writing" end
  if not self.id or not self.connected then return nil, "closed" end
  local sent, err, _, refused = run(self, prim.send, prim.finish_send, self.id, data,
    self.send_timeout)
  if not sent then
    if not refused then release(self) end
    return nil, err
  end
  return sent
end

-- Whether a receive error ended the connection (a timeout does not).
local function ends_connection(err)
  return err ~= "timeout"
end

function tcp:receive(pattern)
  local arg
  if pattern == nil or pattern == "*l" or pattern == "l" then
    arg = "l"
  elseif pattern == "*a" or pattern == "a" then
    arg = "a"
  elseif type(pattern) == "number" then
    if pattern ~= pattern or pattern < 0 then
      error("bad argument #1 to 'receive' (bad pattern argument)", 2)
    end
    arg = floor(pattern)
    if arg == 0 then return "" end
  elseif type(pattern) == "string" then
    if tonumber(pattern) then return self:receive(tonumber(pattern)) end
    error("bad argument #1 to 'receive' (bad pattern argument: " .. pattern .. ")", 2)
  else
    error("bad argument #1 to 'receive' (bad pattern argument)", 2)
  end
  if self.busy then return nil, "socket busy reading" end
  if not self.id or not self.connected then return nil, "closed" end
  local data, err, partial, refused = run(self, prim.receive, prim.finish_receive, self.id, arg,
    self.read_timeout)
  if data == nil then
    if refused then return nil, err end
    if ends_connection(err) then release(self) end
    return nil, err, partial
  end
  return data
end

-- receiveuntil(pattern, {inclusive = bool}) -> iterator(size?)
function tcp:receiveuntil(pattern, options)
  if type(pattern) ~= "string" then
    error("bad argument #1 to 'receiveuntil' (string expected, got " .. type(pattern) .. ")", 2)
  end
  if pattern == "" then return nil, "pattern is empty" end
  local inclusive = false
  if options ~= nil then
    if type(options) ~= "table" then
      error("bad argument #2 to 'receiveuntil' (table expected, got " .. type(options) .. ")", 2)
    end
    local value = options.inclusive
    if value ~= nil and type(value) ~= "boolean" then
      error("bad \"inclusive\" option value type: " .. type(value), 2)
    end
    inclusive = value or false
  end
  local sock = self
  local finished = false -- the last chunk came with the pattern: next call ends
  return function(size)
    if size ~= nil then
      if type(size) ~= "number" or size ~= size or size < 0 then
        error("bad argument #1 to iterator (bad size)", 2)
      end
      size = floor(size)
      if size == 0 then size = nil end
    end
    if finished then
      finished = false
      return nil, nil
    end
    if sock.busy then return nil, "socket busy reading" end
    if not sock.id or not sock.connected then return nil, "closed" end
    local data, found, partial, refused = run(sock, prim.receive_until, prim.finish_receive,
      sock.id, pattern, inclusive, size, sock.read_timeout)
    if data == nil then
      local err = found
      if refused then return nil, err end
      if ends_connection(err) then release(sock) end
      return nil, err, partial
    end
    if size and found then
      -- The pattern ended this chunk: the next call says the stream part
      -- is over (nil, nil), as OpenResty's iterator does.
      if data == "" then return nil, nil end
      finished = true
    end
    return data
  end
end

function tcp:settimeout(ms)
  ms = check_ms(ms, 1, "settimeout")
  self.connect_timeout, self.send_timeout, self.read_timeout = ms, ms, ms
end

function tcp:settimeouts(connect, send, read)
  self.connect_timeout = check_ms(connect, 1, "settimeouts")
  self.send_timeout = check_ms(send, 2, "settimeouts")
  self.read_timeout = check_ms(read, 3, "settimeouts")
end

function tcp:setoption()
  return true
end

function tcp:getreusedtimes()
  if not self.id or not self.connected then return nil, "closed" end
  return self.reused
end

-- setkeepalive(timeout_ms?, size?): into the tenant's keepalive pool; the
-- socket is then closed (connect again to use it).
function tcp:setkeepalive(timeout, size)
  timeout = check_ms(timeout, 1, "setkeepalive")
  if size ~= nil then
    if type(size) ~= "number" or size ~= size or size < 0 then
      error("bad argument #2 to 'setkeepalive' (bad pool size)", 2)
    end
    size = size > 0xffffffff and 0xffffffff or floor(size)
  end
  if self.busy then return nil, "socket busy" end
  if not self.id or not self.connected then return nil, "closed" end
  local ok, err = prim.setkeepalive(self.id, timeout, size)
  if not ok and err == "unread data in buffer" then return nil, err end
  release(self)
  if not ok then return nil, err end
  return 1
end

function tcp:close()
  if self.busy then return nil, "socket busy" end
  if not self.id or not self.connected then return nil, "closed" end
  release(self)
  return 1
end

-- ngx.socket.connect(host, port, options?): a connected socket.
function M.connect(...)
  local sock = M.tcp()
  local ok, err = sock:connect(...)
  if not ok then return nil, err end
  return sock
end

function M.udp()
  error("ngx.socket.udp is not available in moonwall", 2)
end

return M
