//! Outbound TCP (`ngx.socket.tcp`) and `resty.http`, end to end through a
//! server, against real upstreams on 127.0.0.1 run by the test: the policy's
//! destinations and address rules, the per-request bounds, timeouts, the
//! deadline, keepalive, and light threads overlapping their I/O.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::site::Site;

/// Serve every connection of a new listener on 127.0.0.1 with `handler`
/// (given the connection and its number), each in a thread of its own.
fn serve(handler: impl Fn(TcpStream, usize) + Send + Sync + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(handler);
    std::thread::spawn(move || {
        let count = AtomicUsize::new(0);
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let n = count.fetch_add(1, Ordering::Relaxed) + 1;
            let handler = handler.clone();
            std::thread::spawn(move || handler(stream, n));
        }
    });
    addr
}

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map_or("", |(_, v)| v.as_str())
    }
}

fn read_line(reader: &mut impl BufRead) -> Option<String> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim_end_matches(['\r', '\n']).to_string()),
    }
}

/// One HTTP/1.1 request (Content-Length or chunked body); None at the end.
fn read_request(reader: &mut impl BufRead) -> Option<Request> {
    let line = read_line(reader)?;
    let mut parts = line.split(' ');
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader)?;
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let mut request = Request {
        method,
        target,
        headers,
        body: Vec::new(),
    };
    if request
        .header("transfer-encoding")
        .eq_ignore_ascii_case("chunked")
    {
        loop {
            let size = usize::from_str_radix(read_line(reader)?.trim(), 16).ok()?;
            if size == 0 {
                while !read_line(reader)?.is_empty() {}
                break;
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).ok()?;
            request.body.extend_from_slice(&chunk[..size]);
        }
    } else if let Ok(length) = request.header("content-length").parse::<usize>() {
        request.body = vec![0; length];
        reader.read_exact(&mut request.body).ok()?;
    }
    Some(request)
}

fn respond(stream: &mut TcpStream, extra: &str, body: &[u8]) -> std::io::Result<()> {
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Upstream: yes\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(body);
    // One write: no small segment waits for a delayed ACK.
    stream.write_all(&response)
}

/// Waits until two requests are there at once ("together"), or gives up
/// ("alone"): light threads' requests that overlap meet here.
#[derive(Default)]
struct Meeting {
    arrived: Mutex<u32>,
    met: Condvar,
}

impl Meeting {
    fn meet(&self) -> &'static str {
        let mut arrived = self.arrived.lock().unwrap();
        *arrived += 1;
        self.met.notify_all();
        let (arrived, _) = self
            .met
            .wait_timeout_while(arrived, Duration::from_secs(5), |n| *n < 2)
            .unwrap();
        if *arrived >= 2 { "together" } else { "alone" }
    }
}

/// The HTTP upstream: its answer depends on the path.
fn http_upstream() -> SocketAddr {
    let meeting = Arc::new(Meeting::default());
    serve(move |stream, conn| {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut stream = stream;
        let mut n = 0;
        while let Some(request) = read_request(&mut reader) {
            n += 1;
            let path = request.target.split('?').next().unwrap_or("");
            let sent = match path {
                "/hello" => {
                    let body = format!(
                        "hello {} ua={} x={}",
                        request.method,
                        request.header("user-agent"),
                        request.header("x-test")
                    );
                    respond(&mut stream, "X-Mixed-Case: Yes\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n", body.as_bytes())
                }
                "/echo" => {
                    let mut body = format!("{} {} ", request.method, request.target).into_bytes();
                    body.extend_from_slice(&request.body);
                    respond(&mut stream, "", &body)
                }
                "/chunked" => stream.write_all(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n3;ext=1\r\ncde\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: done\r\n\r\n",
                ),
                "/close" => {
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nread until the end",
                    );
                    return;
                }
                "/bye" => {
                    let _ = respond(&mut stream, "Connection: close\r\n", b"bye");
                    return;
                }
                "/conn" => respond(&mut stream, "", format!("conn={conn} n={n}").as_bytes()),
                "/meet" => respond(&mut stream, "", meeting.meet().as_bytes()),
                "/huge" => {
                    let body = vec![b'x'; 1 << 20];
                    respond(&mut stream, "", &body)
                }
                "/hang" => {
                    // Never answer: wait for the client to leave.
                    let mut rest = Vec::new();
                    let _ = reader.read_to_end(&mut rest);
                    return;
                }
                _ => stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
            };
            if sent.is_err() {
                return;
            }
        }
    })
}

/// The raw upstream: commands, one per line.
fn raw_upstream() -> SocketAddr {
    serve(|stream, _| {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut stream = stream;
        while let Some(line) = read_line(&mut reader) {
            let sent = match line.as_str() {
                "LINES" => {
                    let _ = stream.write_all(b"one\r\ntw\ro\nthree");
                    let _ = stream.shutdown(Shutdown::Write);
                    continue;
                }
                "ALL" => {
                    let _ = stream.write_all(b"all of\r\nthis");
                    return;
                }
                "BYTES" => stream.write_all(b"0123456789"),
                "PARTS" => {
                    let _ =
                        stream.write_all(b"hello, world! -agentzh\r\n--abcedhb blah--abcedhb tail");
                    return;
                }
                "BIGLINE" => stream.write_all(&vec![b'a'; (1 << 20) + (64 << 10)]),
                "HANG" => Ok(()),
                other => match other.strip_prefix("ECHO ") {
                    Some(text) => stream.write_all(format!("{text}\n").as_bytes()),
                    None => stream.write_all(b"?\n"),
                },
            };
            if sent.is_err() {
                return;
            }
        }
    })
}

/// A site whose policy grants `outbound` (and the extra `[capabilities]`
/// lines), serving `script` as /t.lua with every `PORT` replaced.
fn site(name: &str, limits: &str, capabilities: &str, port: u16, script: &str) -> Site {
    let port = port.to_string();
    Site::start(
        name,
        "",
        limits,
        &capabilities.replace("PORT", &port),
        &[("root/t.lua", &script.replace("PORT", &port))],
    )
}

fn grant(port: u16) -> String {
    format!("outbound = [\"tcp://127.0.0.1:{port}\", \"http://127.0.0.1:{port}\"]")
}

#[test]
fn resty_http_get_and_post() {
    let up = http_upstream();
    let site = site(
        "tcp_http_get_post",
        "",
        &grant(up.port()),
        up.port(),
        r#"
local http = require("resty.http")
local httpc = http.new()
local res, err = httpc:request_uri("http://127.0.0.1:PORT/hello", {
  headers = { ["X-Test"] = "42", ["User-Agent"] = "moonwall-test" },
})
if not res then ngx.say("failed: ", err) return end
ngx.say(res.status, " ", res.reason, " ", res.body)
ngx.say(res.headers["x-upstream"], " ", res.headers["X-MIXED-CASE"], " ", res.headers["content-length"])
ngx.say(table.concat(res.headers["set-cookie"], ","))

local res = assert(http.new():request_uri("http://127.0.0.1:PORT/echo?from=uri", {
  method = "POST", body = "a body", query = { b = "x y", a = 1, flag = true },
}))
ngx.say(res.body)

local res = assert(http.new():request_uri("http://127.0.0.1:PORT/echo?from=uri", { method = "PUT", body = { "a", "b" } }))
ngx.say(res.body)

-- request() with its body reader, a body given by a function (chunked)
local c = http.new()
assert(c:connect({ scheme = "http", host = "127.0.0.1", port = PORT }))
local parts = { "one ", "two ", "three" }
local i = 0
local res = assert(c:request({
  method = "POST", path = "/echo",
  body = function() i = i + 1 return parts[i] end,
}))
ngx.say(res.status, " ", res.has_body)
local got = {}
while true do
  local chunk, err = res.body_reader(4)
  assert(not err, err)
  if not chunk then break end
  got[#got + 1] = chunk
end
ngx.say(table.concat(got, "|"))
ngx.say(c:set_keepalive())

ngx.say(table.unpack(http.new():parse_uri("http://example.com:8080/a/b?c=d#frag")))
ngx.say(table.unpack(http.new():parse_uri("http://[::1]/x?y", false)))
"#,
    );
    let reply = site.get("/t.lua");
    let expected = "200 OK hello GET ua=moonwall-test x=42\n\
        yes Yes 31\n\
        a=1,b=2\n\
        POST /echo?a=1&b=x%20y&flag a body\n\
        PUT /echo?from=uri ab\n\
        200 true\n\
        POST| /ec|ho o|ne t|wo t|hree\n\
        1\n\
        httpexample.com8080/a/b?c=d\n\
        http[::1]80/xy\n";
    assert!(reply.is_ok_with(expected), "{reply:?}");
}

#[test]
fn resty_http_chunked_and_read_until_close() {
    let up = http_upstream();
    let site = site(
        "tcp_http_chunked",
        "",
        &grant(up.port()),
        up.port(),
        r#"
local http = require("resty.http")
local c = http.new()
assert(c:connect("127.0.0.1", PORT))
local res = assert(c:request({ path = "/chunked" }))
ngx.say(res.headers["transfer-encoding"], " ", res:read_body())
res:read_trailers()
ngx.say(res.headers["x-trailer"])
-- the connection is reusable after a chunked body
local res = assert(c:request({ path = "/echo" }))
ngx.say(res:read_body())
ngx.say(c:set_keepalive())

local res = assert(http.new():request_uri("http://127.0.0.1:PORT/close"))
ngx.say(res.status, " ", res.body)
local c = http.new()
assert(c:connect("127.0.0.1", PORT))
local res = assert(c:request({ path = "/close" }))
ngx.say(res:read_body())
-- the server closed it: nothing to keep
ngx.say(c:set_keepalive())
-- the server says it closes: set_keepalive closes
local c = http.new()
assert(c:connect("127.0.0.1", PORT))
ngx.say(assert(c:request({ path = "/bye" })):read_body())
ngx.say(c:set_keepalive())
"#,
    );
    let reply = site.get("/t.lua");
    let expected = "chunked abcdeabcdefghijklmnopqrstuvwxyz\n\
        done\n\
        GET /echo \n\
        1\n\
        200 read until the end\n\
        read until the end\n\
        nilclosed\n\
        bye\n\
        2connection must be closed\n";
    assert!(reply.is_ok_with(expected), "{reply:?}");
}

#[test]
fn keepalive_reuses_connections_across_requests() {
    let up = http_upstream();
    let site = site(
        "tcp_keepalive",
        "",
        &grant(up.port()),
        up.port(),
        r#"
local http = require("resty.http")
for _ = 1, 2 do
  local c = http.new()
  assert(c:connect("127.0.0.1", PORT))
  local reused = c:get_reused_times()
  local res = assert(c:request({ path = "/conn" }))
  ngx.say(res:read_body(), " reused=", reused)
  assert(c:set_keepalive(10000, 4))
end
"#,
    );
    let first = site.get("/t.lua");
    assert_eq!(first.status, 200, "{first:?}");
    let lines: Vec<&str> = first.body.lines().collect();
    assert_eq!(lines.len(), 2, "{first:?}");
    let conn = lines[0].split(' ').next().unwrap().to_string();
    assert_eq!(lines[0], format!("{conn} n=1 reused=0"));
    assert_eq!(lines[1], format!("{conn} n=2 reused=1"));
    // The next request of the tenant finds the connection in the pool.
    let second = site.get("/t.lua");
    assert!(
        second.is_ok_with(&format!("{conn} n=3 reused=2\n{conn} n=4 reused=3\n")),
        "{second:?}"
    );
}

#[test]
fn raw_cosocket_receive_patterns() {
    let up = raw_upstream();
    let site = site(
        "tcp_raw_patterns",
        "",
        &grant(up.port()),
        up.port(),
        r#"
local sock = ngx.socket.tcp()
assert(sock:connect("127.0.0.1", PORT))
ngx.say(sock:send("ECHO hi there\n"), " ", sock:receive())
ngx.say(sock:send({ "ECHO ", { "nested", 1 }, "\n" }), " ", sock:receive("*l"))
assert(sock:send("BYTES\n"))
ngx.say(sock:receive(4), " ", sock:receive("6"), " [", sock:receive(0), "]")
assert(sock:send("LINES\n"))
ngx.say(sock:receive("l"), " ", sock:receive("*l"))
ngx.say(sock:receive())
ngx.say(sock:receive())
ngx.say(sock:getreusedtimes())

local sock = assert(ngx.socket.connect("127.0.0.1", PORT))
assert(sock:send("ALL\n"))
ngx.say(sock:receive("*a"))
sock:close()

local sock = ngx.socket.tcp()
assert(sock:connect("127.0.0.1", PORT))
assert(sock:send("PARTS\n"))
local reader = sock:receiveuntil("\r\n--abcedhb")
ngx.say("[", reader(), "]")
local reader = sock:receiveuntil("--abcedhb", { inclusive = true })
ngx.say("[", reader(), "]")
ngx.say(sock:receive("*a"))

local sock = ngx.socket.tcp()
assert(sock:connect("127.0.0.1", PORT))
assert(sock:send("PARTS\n"))
local reader = sock:receiveuntil("\r\n--abcedhb")
while true do
  local data, err, partial = reader(4)
  if not data then
    if err then ngx.say("failed: ", err, " ", partial) break end
    ngx.say("read done")
    break
  end
  ngx.say("read chunk: [", data, "]")
end
ngx.say(sock:close())
ngx.say(sock:close())
ngx.say(sock:sslhandshake())
"#,
    );
    let reply = site.get("/t.lua");
    let expected = [
        "14 hi there",
        "13 nested1",
        "0123 456789 []",
        "one two",
        "nilclosedthree",
        "nilclosed",
        "nilclosed",
        "all of\r\nthis",
        "[hello, world! -agentzh]",
        "[ blah--abcedhb]",
        " tail",
        "read chunk: [hell]",
        "read chunk: [o, w]",
        "read chunk: [orld]",
        "read chunk: [! -a]",
        "read chunk: [gent]",
        "read chunk: [zh]",
        "read done",
        "1",
        "nilclosed",
        "nilclosed",
        "",
    ]
    .join("\n");
    assert!(reply.is_ok_with(&expected), "{reply:?}");
}

#[test]
fn light_threads_overlap_their_requests() {
    let up = http_upstream();
    let site = site(
        "tcp_threads",
        "",
        &grant(up.port()),
        up.port(),
        r#"
local http = require("resty.http")
local function fetch()
  local res, err = http.new():request_uri("http://127.0.0.1:PORT/meet")
  return res and res.body or err
end
local a = ngx.thread.spawn(fetch)
local b = ngx.thread.spawn(fetch)
ngx.say(ngx.thread.wait(a))
ngx.say(ngx.thread.wait(b))
"#,
    );
    // The upstream answers "together" only to requests that were in flight
    // at the same time.
    let reply = site.get("/t.lua");
    assert!(
        reply.is_ok_with("truetogether\ntruetogether\n"),
        "{reply:?}"
    );
}

#[test]
fn destinations_not_granted_are_refused() {
    let up = raw_upstream();
    let script = r#"
local sock = ngx.socket.tcp()
ngx.say(sock:connect("127.0.0.1", PORT))
ngx.say(sock:connect("127.0.0.1", 1))
ngx.say(sock:connect("example.com", 80))
ngx.say(sock:connect("::ffff:127.0.0.1", PORT))
ngx.say(sock:connect("bad name!", 80))
ngx.say(sock:connect("unix:/tmp/x.sock"))
ngx.say(require("resty.http").new():request_uri("http://127.0.0.1:1/"))
"#;
    let port = up.port();
    let nothing = site("tcp_denied_none", "", "", port, script);
    let reply = nothing.get("/t.lua");
    let denied = |target: &str| {
        format!(
            "niloutbound connection to {target} is not granted (policy [capabilities] outbound)\n"
        )
    };
    let expected = [
        denied(&format!("127.0.0.1:{port}")),
        denied("127.0.0.1:1"),
        denied("example.com:80"),
        denied(&format!("127.0.0.1:{port}")),
        "nilbad host name \"bad name!\"\n".to_string(),
        "nilunix domain sockets are not available in moonwall\n".to_string(),
        denied("127.0.0.1:1"),
    ]
    .concat();
    assert!(reply.is_ok_with(&expected), "{reply:?}");

    // Granted: the same address in its IPv4-mapped form is the same
    // destination; other ports and hosts stay refused.
    let granted = site("tcp_denied_some", "", &grant(port), port, script);
    let reply = granted.get("/t.lua");
    let expected = [
        "1\n".to_string(),
        denied("127.0.0.1:1"),
        denied("example.com:80"),
        "1\n".to_string(),
        "nilbad host name \"bad name!\"\n".to_string(),
        "nilunix domain sockets are not available in moonwall\n".to_string(),
        denied("127.0.0.1:1"),
    ]
    .concat();
    assert!(reply.is_ok_with(&expected), "{reply:?}");
}

#[test]
fn names_resolving_to_private_addresses_need_their_grant() {
    let up = http_upstream();
    let port = up.port();
    let script = r#"
local sock = ngx.socket.tcp()
ngx.say(sock:connect("localhost", PORT))
local res, err = require("resty.http").new():request_uri("http://localhost:PORT/hello")
ngx.say(res and res.body or err)
"#;
    // The policy grants the name only: it resolves to loopback, refused.
    let blocked = site(
        "tcp_private_blocked",
        "",
        "outbound = [\"http://localhost:PORT\"]",
        port,
        script,
    );
    let reply = blocked.get("/t.lua");
    assert_eq!(reply.status, 200, "{reply:?}");
    let lines: Vec<&str> = reply.body.lines().collect();
    assert_eq!(lines.len(), 2, "{reply:?}");
    for line in &lines {
        assert!(
            line.contains(&format!(
                "outbound connection to localhost:{port} is not granted: localhost resolves to "
            )) && line.contains("a loopback address (policy [capabilities] outbound_private)"),
            "{reply:?}"
        );
    }
    // Loopback granted explicitly: the name works.
    let allowed = site(
        "tcp_private_allowed",
        "",
        "outbound = [\"http://localhost:PORT\"]\noutbound_private = [\"127.0.0.0/8\", \"::1\"]",
        port,
        script,
    );
    let reply = allowed.get("/t.lua");
    assert!(
        reply.is_ok_with("1\nhello GET ua=lua-resty-http (moonwall) x=\n"),
        "{reply:?}"
    );
}

#[test]
fn huge_responses_are_cut_at_the_receive_limit() {
    let up = http_upstream();
    let site = site(
        "tcp_huge",
        "",
        &format!("{}\noutbound_max_receive_kib = 64", grant(up.port())),
        up.port(),
        r#"
local http = require("resty.http")
local res, err = http.new():request_uri("http://127.0.0.1:PORT/huge")
ngx.say(res, " ", err)
-- the budget is the request's: nothing more comes in
local sock = ngx.socket.tcp()
assert(sock:connect("127.0.0.1", PORT))
assert(sock:send("GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"))
local line, err, partial = sock:receive()
ngx.say(line, " ", err, " [", partial, "]")
"#,
    );
    let reply = site.get("/t.lua");
    let limit = "outbound receive limit reached (65536 bytes per request; policy [capabilities] outbound_max_receive_kib)";
    assert!(
        reply.is_ok_with(&format!("nil {limit}\nnil {limit} []\n")),
        "{reply:?}"
    );
}

#[test]
fn hostile_inputs_are_bounded() {
    let up = raw_upstream();
    let site = site(
        "tcp_hostile",
        "",
        &grant(up.port()),
        up.port(),
        r#"
local sock = ngx.socket.tcp()
assert(sock:connect("127.0.0.1", PORT))
local reader = sock:receiveuntil(string.rep("ab", 3000))
ngx.say(reader())
ngx.say(sock:receiveuntil(""))
assert(sock:send("BIGLINE\n"))
local line, err, partial = sock:receive()
ngx.say(line, " ", err, " ", #partial > 1048576)
ngx.say(sock:send("ECHO x\n"))
ngx.say(pcall(sock.receive, sock, {}))
ngx.say(sock:connect(string.rep("a", 300), 80))
ngx.say(sock:connect("127.0.0.1", PORT, { pool = string.rep("p", 300) }))
ngx.say(sock:connect("127.0.0.1", 70000))
"#,
    );
    let reply = site.get("/t.lua");
    let expected = [
        "nilpattern too long (at most 4096 bytes)",
        "nilpattern is empty",
        "nil line too long (more than 1048576 bytes) true",
        "nilclosed",
        "falsebad argument #1 to 'receive' (bad pattern argument)",
        "nilbad host name",
        "nilpool name too long (at most 256 bytes)",
        "nilbad port number: 70000",
        "",
    ]
    .join("\n");
    assert!(reply.is_ok_with(&expected), "{reply:?}");
}

#[test]
fn read_timeouts_keep_the_connection_and_policy_caps_them() {
    let up = raw_upstream();
    let script = r#"
local sock = ngx.socket.tcp()
SETTIMEOUT
assert(sock:connect("127.0.0.1", PORT))
assert(sock:send("HANG\n"))
ngx.say(sock:receive())
-- a read timeout leaves the connection usable
assert(sock:send("ECHO after\n"))
ngx.say(sock:receive())
"#;
    let by_script = site(
        "tcp_read_timeout_script",
        "",
        &grant(up.port()),
        up.port(),
        &script.replace("SETTIMEOUT", "sock:settimeout(100)"),
    );
    let reply = by_script.get("/t.lua");
    assert!(reply.is_ok_with("niltimeout\nafter\n"), "{reply:?}");

    // The policy's read timeout caps the script's.
    let by_policy = site(
        "tcp_read_timeout_policy",
        "",
        &format!("{}\noutbound_read_timeout_ms = 100", grant(up.port())),
        up.port(),
        &script.replace("SETTIMEOUT", "sock:settimeouts(nil, nil, 60000)"),
    );
    let reply = by_policy.get("/t.lua");
    assert!(reply.is_ok_with("niltimeout\nafter\n"), "{reply:?}");
}

#[test]
fn connect_timeouts() {
    // A listener whose accept queue is full: new connections hang in
    // connect.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let listener = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        socket.listen(1).unwrap().into_std().unwrap()
    });
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    let mut full = false;
    for _ in 0..64 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(stream) => held.push(stream),
            Err(_) => {
                full = true;
                break;
            }
        }
    }
    assert!(full, "the accept queue never filled");
    let site = site(
        "tcp_connect_timeout",
        "",
        &format!("{}\noutbound_connect_timeout_ms = 200", grant(addr.port())),
        addr.port(),
        r#"
local sock = ngx.socket.tcp()
sock:settimeout(60000)
ngx.say(sock:connect("127.0.0.1", PORT))
"#,
    );
    let reply = site.get("/t.lua");
    assert!(reply.is_ok_with("niltimeout\n"), "{reply:?}");
    drop(held);
    drop(listener);
}

#[test]
fn connections_and_sockets_per_request_are_bounded() {
    let up = raw_upstream();
    let site = site(
        "tcp_bounds",
        "",
        &format!(
            "{}\noutbound_max_connections = 3\noutbound_max_sockets = 2",
            grant(up.port())
        ),
        up.port(),
        r#"
local a = assert(ngx.socket.connect("127.0.0.1", PORT))
local b = assert(ngx.socket.connect("127.0.0.1", PORT))
ngx.say(ngx.socket.connect("127.0.0.1", PORT))
a:close()
local c = assert(ngx.socket.connect("127.0.0.1", PORT))
b:close()
ngx.say(ngx.socket.connect("127.0.0.1", PORT))
"#,
    );
    let reply = site.get("/t.lua");
    let expected = "niltoo many open sockets (at most 2 per request, its subrequests included; policy [capabilities] outbound_max_sockets)\n\
        niltoo many outbound connections (at most 3 per request, its subrequests included; policy [capabilities] outbound_max_connections)\n";
    assert!(reply.is_ok_with(expected), "{reply:?}");
}

#[test]
fn the_deadline_ends_a_hanging_upstream_wait() {
    let up = http_upstream();
    let site = site(
        "tcp_deadline",
        "timeout_ms = 300",
        &grant(up.port()),
        up.port(),
        r#"
local http = require("resty.http")
local c = http.new()
c:set_timeout(60000)
local res, err = c:request_uri("http://127.0.0.1:PORT/hang")
ngx.say("never ", err)
"#,
    );
    let started = std::time::Instant::now();
    let reply = site.get("/t.lua");
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(common::site::logged().contains("limit-time"));
}

#[test]
fn policy_keys_are_checked() {
    for (line, message) in [
        (
            "outbound = [\"tcp://a.com\"]",
            "a tcp destination needs a port",
        ),
        (
            "outbound_private = [\"10.0.0.1/8\"]",
            "bits set beyond the /8 prefix",
        ),
        (
            "outbound_private = [\"nope\"]",
            "is not an address or a range",
        ),
        (
            "outbound_max_connections = 0",
            "outbound_max_connections must be between 1 and 10000",
        ),
        (
            "outbound_read_timeout_ms = 0",
            "outbound_read_timeout_ms must be between 1 and 3600000",
        ),
        (
            "outbound_keepalive_pool = 5000",
            "outbound_keepalive_pool must be between 0 and 1024",
        ),
        (
            "outbound_max_tenant_sockets = 0",
            "outbound_max_tenant_sockets must be between 1 and 65536",
        ),
        (
            "outbound_tls_no_verify = \"yes\"",
            "t.toml:5:26: invalid type: string \"yes\", expected a boolean",
        ),
    ] {
        let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("sites")
            .join("tcp_policy_keys");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("policies")).unwrap();
        std::fs::create_dir_all(dir.join("root")).unwrap();
        let policy = dir.join("policies/t.toml");
        std::fs::write(
            &policy,
            format!("tenant = \"t\"\nroot = \"../root\"\n\n[capabilities]\n{line}\n"),
        )
        .unwrap();
        let error = moonwall::tenants::policy::Policy::load(
            &policy,
            &moonwall::tenants::policy::Ceilings::default(),
            &[dir.canonicalize().unwrap()],
            &Default::default(),
        )
        .expect_err(line)
        .to_string();
        assert!(error.contains(message), "{line}: {error}");
    }
}

#[test]
fn finished_sockets_free_their_slot() {
    let up = http_upstream();
    let site = site(
        "tcp_release",
        "",
        &format!("{}\noutbound_max_sockets = 1", grant(up.port())),
        up.port(),
        r#"
local http = require("resty.http")
-- each client's socket goes back to the pool or is closed: one slot is enough
for i = 1, 3 do
  assert(http.new():request_uri("http://127.0.0.1:PORT/echo", { keepalive = i ~= 2 }))
end
-- a socket nobody closes is freed when it is collected
for _ = 1, 3 do
  local sock = ngx.socket.tcp()
  assert(sock:connect("127.0.0.1", PORT))
  sock = nil
  collectgarbage()
end
ngx.say("ok")
"#,
    );
    let reply = site.get("/t.lua");
    assert!(reply.is_ok_with("ok\n"), "{reply:?}");
}

#[test]
fn plain_scripts_get_no_outbound_access() {
    let out = common::stdout_of(
        "local sock = require('ngx.socket').tcp() print(sock:connect('127.0.0.1', 80))",
    );
    assert_eq!(
        out,
        "nil\toutbound connection to 127.0.0.1:80 is not granted (policy [capabilities] outbound)\n"
    );
}

#[test]
fn cosockets_work_in_every_phase() {
    // OpenResty refuses cosockets in the filters and the log phase; moonwall
    // does not need to: here the header filter, the body filter and the log
    // phase each talk to the upstream.
    let upstream = raw_upstream();
    let port = upstream.port();
    let ask = |what: &str| {
        format!(
            "local s = ngx.socket.tcp() assert(s:connect('127.0.0.1', {port})) \
             assert(s:send('ECHO {what}\\n')) local line = assert(s:receive()) s:close()"
        )
    };
    let site = Site::start(
        "cosockets_every_phase",
        "",
        "",
        &format!(
            "{}\nshared_dicts = {{ seen = \"64k\" }}\n\n[[location]]\npath = \"/p\"\n\
             content = \"content.lua\"\nheader_filter = \"hf.lua\"\nbody_filter = \"bf.lua\"\nlog = \"log.lua\"\n",
            grant(port)
        ),
        &[
            ("root/content.lua", "ngx.say('body')"),
            (
                "root/hf.lua",
                &format!(
                    "{} ngx.header['X-Upstream'] = line",
                    ask("from-header-filter")
                ),
            ),
            (
                "root/bf.lua",
                &format!(
                    "if ngx.arg[2] then {} ngx.arg[1] = (ngx.arg[1] or '') .. line .. '\\n' end",
                    ask("from-body-filter")
                ),
            ),
            (
                "root/log.lua",
                &format!("{} ngx.shared.seen:set('log', line)", ask("from-log")),
            ),
            ("root/seen.lua", "ngx.say(ngx.shared.seen:get('log'))"),
        ],
    );
    let reply = site.get("/p");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("x-upstream"), Some("from-header-filter"));
    assert_eq!(reply.body, "body\nfrom-body-filter\n");
    // The log phase runs after the response: look for its write.
    let mut seen = String::new();
    for _ in 0..100 {
        seen = site.get("/seen.lua").body;
        if seen == "from-log\n" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(seen, "from-log\n");
}

/// A request waiting on an upstream holds no CPU slot: 50 requests to an
/// upstream that answers after a second all wait at once, under the default
/// policy (on a 2-core machine a tenant runs one request on a CPU at a time).
#[test]
fn requests_waiting_on_an_upstream_hold_no_cpu_slot() {
    let up = serve(|stream, _| {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut stream = stream;
        while read_request(&mut reader).is_some() {
            std::thread::sleep(Duration::from_secs(1));
            if respond(&mut stream, "", b"late").is_err() {
                return;
            }
        }
    });
    let site = site(
        "tcp_waiting_overlaps",
        "timeout_ms = 60000",
        &grant(up.port()),
        up.port(),
        r#"
ngx.update_time()
local started = ngx.now()
local res, err = require("resty.http").new():request_uri("http://127.0.0.1:PORT/slow")
assert(res and res.body == "late", err)
ngx.update_time()
ngx.say(string.format("%.3f %.3f", started, ngx.now()))
"#,
    );
    let replies = site.all_at_once("/t.lua", 50);
    common::site::assert_all_overlapped(&replies);
}

/// Poll `condition` for up to 20 seconds.
fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    for _ in 0..1000 {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// An upstream that holds every connection: each one waits until the
/// test releases them all (or a minute passes), is sent `go`, and stays
/// open until the client closes it. Also the count of connections
/// accepted.
struct Holding {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    released: Arc<(Mutex<bool>, Condvar)>,
}

impl Holding {
    fn start() -> Holding {
        let released = Arc::new((Mutex::new(false), Condvar::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (counted, gate) = (accepted.clone(), released.clone());
        let addr = serve(move |mut stream, _| {
            counted.fetch_add(1, Ordering::SeqCst);
            let (lock, open) = &*gate;
            let wait = lock.lock().unwrap();
            let wait = open
                .wait_timeout_while(wait, Duration::from_secs(60), |go| !*go)
                .unwrap();
            drop(wait);
            if stream.write_all(b"go\n").is_ok() {
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest);
            }
        });
        Holding {
            addr,
            accepted,
            released,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn release(&self) {
        *self.released.0.lock().unwrap() = true;
        self.released.1.notify_all();
    }
}

/// A script that connects up to 3 sockets at once, counts itself in the
/// dict `holds` once it tried them all, and keeps those it got until the
/// upstream's `go`: prints how many it held, then each distinct error.
const HOLD_SOCKETS: &str = r#"
local held, errors = {}, {}
for _ = 1, 3 do
  local sock, err = ngx.socket.connect("127.0.0.1", PORT)
  if sock then held[#held + 1] = sock else errors[err] = true end
end
ngx.shared.holds:incr("tried", 1, 0)
for _, sock in ipairs(held) do assert(sock:receive() == "go") end
ngx.print(#held)
for err in pairs(errors) do ngx.print("|", err) end
"#;

/// How many `HOLD_SOCKETS` runs tried all their connects.
const TRIED: &str = "ngx.print(ngx.shared.holds:get('tried') or 0)";

/// The replies' held counts added up, and every error they name.
fn held_and_errors<'a>(bodies: impl IntoIterator<Item = &'a str>) -> (usize, Vec<String>) {
    let mut held = 0;
    let mut errors = Vec::new();
    for body in bodies {
        let mut parts = body.trim_end().split('|');
        held += parts
            .next()
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("not a held count: {body:?}"));
        errors.extend(parts.map(str::to_string));
    }
    (held, errors)
}

/// A client request and its subrequests share one `outbound_max_sockets`:
/// three subrequests each trying to hold three sockets hold four in all,
/// not nine (a budget per instance let one request hold 50 times the cap).
#[test]
fn a_request_and_its_subrequests_share_one_socket_budget() {
    let up = Holding::start();
    let port = up.addr.port().to_string();
    let site = Site::start(
        "tcp_tree_sockets",
        "",
        "timeout_ms = 60000",
        &format!(
            "{}\noutbound_max_sockets = 4\nshared_dicts = {{ holds = \"64k\" }}",
            grant(up.addr.port())
        ),
        &[
            ("root/hold.lua", &HOLD_SOCKETS.replace("PORT", &port)),
            ("root/tried.lua", TRIED),
            (
                "root/t.lua",
                r#"
local replies = { ngx.location.capture_multi({ { "/hold.lua" }, { "/hold.lua" }, { "/hold.lua" } }) }
for _, reply in ipairs(replies) do ngx.say(reply.body) end
"#,
            ),
        ],
    );
    let addr = site.addr;
    let request = std::thread::spawn(move || {
        common::site::send(
            addr,
            b"GET /t.lua HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
    });
    // Every subrequest tried its sockets and holds what it got.
    assert!(eventually(|| site.get("/tried.lua").body == "3"));
    up.release();
    let reply = request.join().unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    let (held, errors) = held_and_errors(reply.body.lines());
    assert_eq!(held, 4, "{reply:?}");
    assert_eq!(up.accepted(), 4, "{reply:?}");
    assert!(!errors.is_empty(), "{reply:?}");
    for error in errors {
        assert_eq!(
            error,
            "too many open sockets (at most 4 per request, its subrequests included; policy [capabilities] outbound_max_sockets)"
        );
    }
}

/// A client request and its subrequests share one
/// `outbound_max_connections`: three subrequests each connecting three
/// times make five connects in all, not nine.
#[test]
fn a_request_and_its_subrequests_share_one_connection_budget() {
    let up = raw_upstream();
    let port = up.port().to_string();
    let site = Site::start(
        "tcp_tree_connections",
        "",
        "",
        &format!("{}\noutbound_max_connections = 5", grant(up.port())),
        &[
            (
                "root/connect.lua",
                &r#"
local made, errors = 0, {}
for _ = 1, 3 do
  local sock, err = ngx.socket.connect("127.0.0.1", PORT)
  if sock then made = made + 1 sock:close() else errors[err] = true end
end
ngx.print(made)
for err in pairs(errors) do ngx.print("|", err) end
"#
                .replace("PORT", &port),
            ),
            (
                "root/t.lua",
                r#"
local replies = { ngx.location.capture_multi({ { "/connect.lua" }, { "/connect.lua" }, { "/connect.lua" } }) }
for _, reply in ipairs(replies) do ngx.say(reply.body) end
"#,
            ),
        ],
    );
    let reply = site.get("/t.lua");
    assert_eq!(reply.status, 200, "{reply:?}");
    let (made, errors) = held_and_errors(reply.body.lines());
    assert_eq!(made, 5, "{reply:?}");
    assert!(!errors.is_empty(), "{reply:?}");
    for error in errors {
        assert_eq!(
            error,
            "too many outbound connections (at most 5 per request, its subrequests included; policy [capabilities] outbound_max_connections)"
        );
    }
}

/// A site of two tenants: `a` (the default, scripts in `root/`) and `b`
/// (host `b.test`, scripts in `root_b/`), each with its `[capabilities]`.
fn two_tenants(name: &str, a: &str, b: &str, files: &[(&str, &str)]) -> Site {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("sites")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    for sub in ["policies", "root", "root_b"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let policy = |tenant: &str, host: &str, root: &str, capabilities: &str| {
        format!(
            "tenant = \"{tenant}\"\nhosts = [\"{host}\"]\nroot = \"../{root}\"\n\n[limits]\ntimeout_ms = 30000\n\n[capabilities]\n{capabilities}\n"
        )
    };
    let mut all = vec![
        (
            "moonwall.toml".to_string(),
            "listen = \"127.0.0.1:0\"\npolicies = \"policies\"\ndefault_tenant = \"a\"\n\n[limits]\nmemory_mib = 128\n".to_string(),
        ),
        ("policies/a.toml".into(), policy("a", "localhost", "root", a)),
        ("policies/b.toml".into(), policy("b", "b.test", "root_b", b)),
    ];
    all.extend(files.iter().map(|(p, c)| (p.to_string(), c.to_string())));
    for (path, contents) in all {
        std::fs::write(dir.join(path), contents).unwrap();
    }
    Site::serve(dir)
}

/// A tenant's connections across all its requests in flight are capped by
/// `outbound_max_tenant_sockets`: three requests each holding three sockets
/// get four in all, and another tenant still connects meanwhile.
#[test]
fn a_tenants_requests_together_hold_at_most_its_socket_budget() {
    let up = Holding::start();
    let echo = raw_upstream();
    let a = format!(
        "outbound = [\"tcp://127.0.0.1:{}\"]\noutbound_max_tenant_sockets = 4\nshared_dicts = {{ holds = \"64k\" }}",
        up.addr.port()
    );
    let b = format!("outbound = [\"tcp://127.0.0.1:{}\"]", echo.port());
    let site = two_tenants(
        "tcp_tenant_sockets",
        &a,
        &b,
        &[
            (
                "root/hold.lua",
                &HOLD_SOCKETS.replace("PORT", &up.addr.port().to_string()),
            ),
            ("root/tried.lua", TRIED),
            (
                "root_b/echo.lua",
                &format!(
                    "local s = assert(ngx.socket.connect('127.0.0.1', {})) \
                     assert(s:send('ECHO b connects\\n')) ngx.say(assert(s:receive()))",
                    echo.port()
                ),
            ),
        ],
    );
    let addr = site.addr;
    let holders: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(move || {
                common::site::send(
                    addr,
                    b"GET /hold.lua HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                )
            })
        })
        .collect();
    // While tenant a holds what it got, tenant b connects.
    assert!(eventually(|| site.get("/tried.lua").body == "3"));
    let other = common::site::send(
        addr,
        b"GET /echo.lua HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n",
    );
    assert!(other.is_ok_with("b connects\n"), "{other:?}");
    up.release();
    let replies: Vec<_> = holders.into_iter().map(|t| t.join().unwrap()).collect();
    for reply in &replies {
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    let (held, errors) = held_and_errors(replies.iter().map(|r| r.body.as_str()));
    assert_eq!(held, 4, "{replies:?}");
    assert_eq!(up.accepted(), 4, "{replies:?}");
    assert!(!errors.is_empty(), "{replies:?}");
    for error in errors {
        assert_eq!(
            error,
            "too many outbound connections open for the tenant (at most 4 at once, all its requests together, idle keepalive connections included; policy [capabilities] outbound_max_tenant_sockets)"
        );
    }
}

/// Idle keepalive connections hold descriptors, so they count against the
/// tenant's budget: a connect that finds the budget spent closes the oldest
/// idle connection to make room, and the pool never holds the budget away
/// from the tenant's requests.
#[test]
fn idle_keepalive_connections_count_against_the_tenant_budget() {
    let open = Arc::new(AtomicUsize::new(0));
    let counted = open.clone();
    let up = serve(move |stream, _| {
        counted.fetch_add(1, Ordering::SeqCst);
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut stream = stream;
        while let Some(line) = read_line(&mut reader) {
            if stream.write_all(format!("{line}\n").as_bytes()).is_err() {
                break;
            }
        }
        counted.fetch_sub(1, Ordering::SeqCst);
    });
    let site = site(
        "tcp_tenant_pool",
        "",
        &format!(
            "{}\noutbound_max_tenant_sockets = 2\noutbound_keepalive_pool = 8",
            grant(up.port())
        ),
        up.port(),
        r#"
local pool = ngx.var.arg_pool
local held = {}
for i = 1, tonumber(ngx.var.arg_n) do
  local sock, err = ngx.socket.connect("127.0.0.1", PORT, { pool = pool })
  if not sock then ngx.say(err) break end
  assert(sock:send("hi\n")) assert(sock:receive() == "hi")
  held[#held + 1] = sock
  ngx.say(pool, " ", sock:getreusedtimes())
end
for _, sock in ipairs(held) do assert(sock:setkeepalive()) end
"#,
    );
    // Two connections go to the pool: the budget is spent by idle ones.
    let first = site.get("/t.lua?pool=p&n=2");
    assert!(first.is_ok_with("p 0\np 0\n"), "{first:?}");
    assert!(eventually(|| open.load(Ordering::SeqCst) == 2));
    // Three more to another pool: the two idle ones are closed to make room
    // for two, and the third finds the budget spent by the request itself.
    let second = site.get("/t.lua?pool=q&n=3");
    assert!(
        second.is_ok_with(
            "q 0\nq 0\ntoo many outbound connections open for the tenant (at most 2 at once, all its requests together, idle keepalive connections included; policy [capabilities] outbound_max_tenant_sockets)\n"
        ),
        "{second:?}"
    );
    // At no point more than the budget stays open at the upstream.
    assert!(eventually(|| open.load(Ordering::SeqCst) == 2));
    let third = site.get("/t.lua?pool=q&n=2");
    assert!(third.is_ok_with("q 1\nq 1\n"), "{third:?}");
}
