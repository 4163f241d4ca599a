//! TLS out (`sock:sslhandshake`, `resty.http` with `https://`), end to end
//! through a server, against real TLS servers on 127.0.0.1 run by the test
//! with certificates made here (rcgen): a test CA given to moonwall by the
//! server config's `tls_ca_file`, leaf certificates for the right name, for
//! another name, and no CA at all; the policy's `outbound_tls_no_verify`;
//! keepalive of TLS connections.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::site::Site;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A test CA.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A name of its own: a verifier looks for a certificate's issuer
        // by name.
        static MADE: AtomicUsize = AtomicUsize::new(0);
        let n = MADE.fetch_add(1, Ordering::SeqCst);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("moonwall test CA {n}"));
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate for `names` (DNS names or IP addresses), and its
    /// key.
    fn leaf(&self, names: &[&str]) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (vec![cert.der().clone()], key)
    }
}

/// A TLS server on 127.0.0.1: how many TCP connections it accepted.
struct TlsServer {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

/// Serve TLS with `chain` and `key`. On each connection, line commands:
/// `ECHO text` (answers `text`), `SNI` (the server name the client sent, or
/// `none`), `CONN` (`conn=N sni=NAME`, N the connection's number), or an
/// HTTP/1.1 GET (answered with `GET PATH host=HOST conn=N sni=NAME`,
/// keep-alive).
#[allow(deprecated)]
fn tls_server(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> TlsServer {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            let config = config.clone();
            std::thread::spawn(move || {
                let Ok(conn) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let mut reader = BufReader::new(rustls::StreamOwned::new(conn, stream));
                serve_tls(&mut reader, n);
            });
        }
    });
    TlsServer { addr, accepted }
}

type Tls = rustls::StreamOwned<rustls::ServerConnection, TcpStream>;

fn serve_tls(reader: &mut BufReader<Tls>, n: usize) {
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let sni = reader
            .get_ref()
            .conn
            .server_name()
            .unwrap_or("none")
            .to_string();
        let command = line.trim_end().to_string();
        let reply = if let Some(text) = command.strip_prefix("ECHO ") {
            format!("{text}\n")
        } else if command == "SNI" {
            format!("{sni}\n")
        } else if command == "CONN" {
            format!("conn={n} sni={sni}\n")
        } else if let Some(rest) = command.strip_prefix("GET ") {
            let path = rest.split(' ').next().unwrap_or("").to_string();
            let mut host = String::new();
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) == 0 {
                    return;
                }
                let header = header.trim_end();
                if header.is_empty() {
                    break;
                }
                if let Some((name, value)) = header.split_once(':')
                    && name.eq_ignore_ascii_case("host")
                {
                    host = value.trim().to_string();
                }
            }
            let body = format!("GET {path} host={host} conn={n} sni={sni}");
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        } else {
            "?\n".to_string()
        };
        let stream = reader.get_mut();
        if stream.write_all(reply.as_bytes()).is_err() || stream.flush().is_err() {
            return;
        }
    }
}

/// A site whose policy grants `tcp://` and `https://` to the server's port
/// (and the extra `[capabilities]` lines), whose server config trusts
/// `ca` (if any) with `tls_ca_file`, serving `script` as /t.lua with every
/// `PORT` replaced.
fn site(name: &str, ca: Option<&Ca>, capabilities: &str, port: u16, script: &str) -> Site {
    let port = port.to_string();
    let grant = format!("outbound = [\"tcp://127.0.0.1:{port}\", \"https://127.0.0.1:{port}\"]");
    let ca_pem = ca.map(Ca::pem).unwrap_or_default();
    let mut files = vec![("root/t.lua", script.replace("PORT", &port))];
    if ca.is_some() {
        files.push(("ca.pem", ca_pem));
    }
    let files: Vec<(&str, &str)> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
    Site::start(
        name,
        if ca.is_some() {
            "tls_ca_file = \"ca.pem\""
        } else {
            ""
        },
        "",
        &format!("{grant}\n{capabilities}"),
        &files,
    )
}

#[test]
fn sslhandshake_then_send_and_receive() {
    let ca = Ca::new();
    let (chain, key) = ca.leaf(&["localhost", "127.0.0.1"]);
    let server = tls_server(chain, key);
    let site = site(
        "tls_echo",
        Some(&ca),
        "",
        server.addr.port(),
        r#"
local sock = ngx.socket.tcp()
ngx.say(sock:sslhandshake(nil, "localhost"))
assert(sock:connect("127.0.0.1", PORT))
local session, err = sock:sslhandshake(nil, "localhost")
ngx.say(type(session), " ", tostring(err), " ", tostring(session))
ngx.say(sock:send("ECHO hello over tls\n"))
ngx.say(sock:receive())
ngx.say(sock:sslhandshake(false, "localhost"))
ngx.say(sock:send({"SN", "I\n"}))
ngx.say(sock:receive())
ngx.say(sock:close())
-- no server name: the host connected to (an address: no SNI)
local sock = ngx.socket.tcp()
assert(sock:connect("127.0.0.1", PORT))
ngx.say(sock:sslhandshake(false))
sock:send("SNI\n")
ngx.say(sock:receive())
sock:close()
"#,
    );
    let reply = site.get("/t.lua");
    let expected = "nilclosed\n\
        table nil ssl session\n\
        20\n\
        hello over tls\n\
        nilsslhandshake was done on this connection already\n\
        4\n\
        localhost\n\
        1\n\
        true\n\
        none\n";
    assert!(reply.is_ok_with(expected), "{reply:?}");
}

#[test]
fn resty_http_gets_https() {
    let ca = Ca::new();
    let (chain, key) = ca.leaf(&["localhost", "127.0.0.1"]);
    let server = tls_server(chain, key);
    let site = site(
        "tls_resty_http",
        Some(&ca),
        "",
        server.addr.port(),
        r#"
local http = require("resty.http")
local res, err = http.new():request_uri("https://127.0.0.1:PORT/hello?a=1")
if not res then ngx.say("failed: ", err) return end
ngx.say(res.status, " ", res.body)
local res = assert(http.new():request_uri("https://127.0.0.1:PORT/named", {
  ssl_server_name = "localhost",
}))
ngx.say(res.body)
-- connect() with its options, then request()
local c = http.new()
assert(c:connect({ scheme = "https", host = "127.0.0.1", port = PORT, ssl_server_name = "localhost" }))
local res = assert(c:request({ path = "/again" }))
ngx.say(res:read_body())
"#,
    );
    let reply = site.get("/t.lua");
    assert_eq!(reply.status, 200, "{reply:?}");
    let port = server.addr.port();
    let lines: Vec<&str> = reply.body.lines().collect();
    assert_eq!(lines.len(), 3, "{reply:?}");
    assert!(
        lines[0].starts_with(&format!("200 GET /hello?a=1 host=127.0.0.1:{port} conn="))
            && lines[0].ends_with(" sni=none"),
        "{reply:?}"
    );
    assert!(
        lines[1].starts_with(&format!("GET /named host=127.0.0.1:{port} conn="))
            && lines[1].ends_with(" sni=localhost"),
        "{reply:?}"
    );
    assert!(
        lines[2].starts_with("GET /again ") && lines[2].ends_with(" sni=localhost"),
        "{reply:?}"
    );
}

#[test]
fn a_certificate_for_another_name_is_refused() {
    let ca = Ca::new();
    let (chain, key) = ca.leaf(&["wrong.example"]);
    let server = tls_server(chain, key);
    let site = site(
        "tls_wrong_name",
        Some(&ca),
        "",
        server.addr.port(),
        r#"
local sock = ngx.socket.tcp()
assert(sock:connect("127.0.0.1", PORT))
ngx.say(sock:sslhandshake(nil, "localhost"))
-- a failed handshake closes the connection
ngx.say(sock:send("ECHO x\n"))
ngx.say(require("resty.http").new():request_uri("https://127.0.0.1:PORT/"))
"#,
    );
    let reply = site.get("/t.lua");
    assert_eq!(reply.status, 200, "{reply:?}");
    let lines: Vec<&str> = reply.body.lines().collect();
    assert_eq!(lines.len(), 3, "{reply:?}");
    assert!(
        lines[0].starts_with(
            "nilcertificate verify failed: certificate not valid for name \"localhost\""
        ) && lines[0].contains("wrong.example"),
        "{reply:?}"
    );
    assert_eq!(lines[1], "nilclosed");
    assert!(
        lines[2].starts_with(
            "nilcertificate verify failed: certificate not valid for name \"127.0.0.1\""
        ),
        "{reply:?}"
    );
}

#[test]
fn an_unknown_issuer_is_refused() {
    // Signed by a CA moonwall is not told about: the system's roots (no
    // tls_ca_file) do not have it.
    let ca = Ca::new();
    let (chain, key) = ca.leaf(&["localhost", "127.0.0.1"]);
    let server = tls_server(chain, key);
    let unknown = "certificate verify failed: unknown issuer (the certificate is not signed by a trusted CA: the system's roots, or the server config's tls_ca_file)";
    let script = r#"
local sock = ngx.socket.tcp()
assert(sock:connect("127.0.0.1", PORT))
ngx.say(sock:sslhandshake(nil, "localhost"))
ngx.say(require("resty.http").new():request_uri("https://127.0.0.1:PORT/"))
"#;
    let site = site("tls_unknown_ca", None, "", server.addr.port(), script);
    let reply = site.get("/t.lua");
    assert!(
        reply.is_ok_with(&format!("nil{unknown}\nnil{unknown}\n")),
        "{reply:?}"
    );
    // Another CA in tls_ca_file: the same.
    let other = Ca::new();
    let site = self::site("tls_other_ca", Some(&other), "", server.addr.port(), script);
    let reply = site.get("/t.lua");
    assert!(
        reply.is_ok_with(&format!("nil{unknown}\nnil{unknown}\n")),
        "{reply:?}"
    );
}

#[test]
fn verify_false_needs_the_policy_grant() {
    let ca = Ca::new();
    let (chain, key) = ca.leaf(&["wrong.example"]);
    let server = tls_server(chain, key);
    let script = r#"
local sock = ngx.socket.tcp()
assert(sock:connect("127.0.0.1", PORT))
local ok, err = sock:sslhandshake(false, "localhost", false)
ngx.say(ok, " ", err)
if ok then
  sock:send("ECHO unverified\n")
  ngx.say(sock:receive())
end
local res, err = require("resty.http").new():request_uri("https://127.0.0.1:PORT/x", { ssl_verify = false })
ngx.say(res and res.status, " ", err)
"#;
    let refused = "sslhandshake with verify = false is not granted: the server's certificate must be verified (policy [capabilities] outbound_tls_no_verify)";
    let denied = site("tls_no_verify_denied", None, "", server.addr.port(), script);
    let reply = denied.get("/t.lua");
    assert!(
        reply.is_ok_with(&format!("nil {refused}\nnil {refused}\n")),
        "{reply:?}"
    );
    // A server of its own: the refused site's connections (which connected,
    // then made no handshake) are not counted.
    let (chain, key) = ca.leaf(&["wrong.example"]);
    let server = tls_server(chain, key);
    let granted = site(
        "tls_no_verify_granted",
        None,
        "outbound_tls_no_verify = true",
        server.addr.port(),
        script,
    );
    let reply = granted.get("/t.lua");
    assert!(
        reply.is_ok_with("true nil\nunverified\n200 nil\n"),
        "{reply:?}"
    );
    // Granted: one connection each, the raw socket's and resty.http's.
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
}

#[test]
fn keepalive_reuses_tls_connections_for_the_same_name_only() {
    let ca = Ca::new();
    let (chain, key) = ca.leaf(&["localhost", "other.localhost", "127.0.0.1"]);
    let server = tls_server(chain, key);
    let site = site(
        "tls_keepalive",
        Some(&ca),
        "",
        server.addr.port(),
        r#"
local function once(name)
  local sock = ngx.socket.tcp()
  assert(sock:connect("127.0.0.1", PORT))
  assert(sock:sslhandshake(false, name))
  local reused = sock:getreusedtimes()
  assert(sock:send("CONN\n"))
  local line = assert(sock:receive())
  assert(sock:setkeepalive(10000, 4))
  return line .. " reused=" .. reused
end
local which = ngx.var.arg_name or "localhost"
ngx.say(once(which))
ngx.say(once(which))
"#,
    );
    let first = site.get("/t.lua");
    assert!(
        first.is_ok_with("conn=1 sni=localhost reused=0\nconn=1 sni=localhost reused=1\n"),
        "{first:?}"
    );
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
    // The next request finds it in the pool; another server name does not
    // get it: a new connection and handshake.
    let again = site.get("/t.lua");
    assert!(
        again.is_ok_with("conn=1 sni=localhost reused=2\nconn=1 sni=localhost reused=3\n"),
        "{again:?}"
    );
    let other = site.get("/t.lua?name=other.localhost");
    assert!(
        other.is_ok_with(
            "conn=2 sni=other.localhost reused=0\nconn=2 sni=other.localhost reused=1\n"
        ),
        "{other:?}"
    );
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
}

#[test]
fn resty_http_keeps_tls_connections_alive() {
    let ca = Ca::new();
    let (chain, key) = ca.leaf(&["localhost", "127.0.0.1"]);
    let server = tls_server(chain, key);
    let site = site(
        "tls_resty_keepalive",
        Some(&ca),
        "",
        server.addr.port(),
        r#"
local http = require("resty.http")
for _, name in ipairs({ "127.0.0.1", "127.0.0.1", "localhost", "localhost" }) do
  local res = assert(http.new():request_uri("https://127.0.0.1:PORT/c", { ssl_server_name = name }))
  ngx.say(res.body:match("conn=%d+ sni=%S+"))
end
"#,
    );
    let reply = site.get("/t.lua");
    assert!(
        reply.is_ok_with(
            "conn=1 sni=none\nconn=1 sni=none\nconn=2 sni=localhost\nconn=2 sni=localhost\n"
        ),
        "{reply:?}"
    );
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
}

#[test]
fn handshake_errors_are_clear() {
    // A peer that accepts and says nothing, and one that closes at once.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming() {
            held.push(stream);
        }
    });
    let closing = TcpListener::bind("127.0.0.1:0").unwrap();
    let closing_port = closing.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in closing.incoming().flatten() {
            let mut hello = [0u8; 16];
            let _ = stream.read(&mut hello);
        }
    });
    let grant = format!(
        "outbound = [\"tcp://127.0.0.1:{silent_port}\", \"tcp://127.0.0.1:{closing_port}\"]\noutbound_tls_no_verify = true"
    );
    let site = Site::start(
        "tls_handshake_errors",
        "",
        "",
        &grant,
        &[(
            "root/t.lua",
            &format!(
                r#"
local sock = ngx.socket.tcp()
sock:settimeout(500)
assert(sock:connect("127.0.0.1", {silent_port}))
ngx.say(sock:sslhandshake(nil, "bad name!"))
ngx.say(#select(2, sock:sslhandshake(nil, string.rep("a", 300))))
ngx.say(sock:sslhandshake(nil, "localhost"))
ngx.say(sock:sslhandshake(nil, "localhost"))
local sock = ngx.socket.tcp()
assert(sock:connect("127.0.0.1", {closing_port}))
ngx.say(sock:sslhandshake(nil, "localhost", false))
"#
            ),
        )],
    );
    let reply = site.get("/t.lua");
    assert_eq!(reply.status, 200, "{reply:?}");
    let lines: Vec<&str> = reply.body.lines().collect();
    assert_eq!(lines.len(), 5, "{reply:?}");
    assert_eq!(
        lines[0],
        "nilbad server name \"bad name!\": not a DNS name or an IP address"
    );
    // The message names the bound, and shows only the start of the name.
    assert!(lines[1].parse::<usize>().unwrap() < 150, "{reply:?}");
    assert_eq!(lines[2], "nilhandshake timed out");
    assert_eq!(lines[3], "nilclosed");
    assert!(lines[4].starts_with("nilhandshake failed"), "{reply:?}");
}

#[test]
fn the_ca_file_is_checked_with_the_server_config() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("sites")
        .join("tls_ca_file_checked");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(dir.join("empty.pem"), "not a certificate\n").unwrap();
    let bad = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    std::fs::write(dir.join("bad.pem"), bad).unwrap();
    let config = dir.join("moonwall.toml");
    for (file, message) in [
        ("missing.pem", "tls_ca_file "),
        (
            "empty.pem",
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
        ),
        ("bad.pem", "certificate 1 is not a usable CA certificate"),
    ] {
        std::fs::write(
            &config,
            format!("policies = \"policies\"\ntls_ca_file = \"{file}\"\n"),
        )
        .unwrap();
        let error = moonwall::tenants::ServerConfig::load(&config)
            .expect_err(file)
            .to_string();
        assert!(
            error.starts_with(&format!("{}:2:15: tls_ca_file ", config.display()))
                && error.contains(file)
                && error.contains(message),
            "{file}: {error}"
        );
    }
}

/// Each handshake costs 10^7 fuel: 10 fit in a request of 2 * 10^8, 30 do
/// not (the script's own work for them is a small part of that).
#[test]
fn handshakes_are_paid_for_in_fuel() {
    let ca = Ca::new();
    let (chain, key) = ca.leaf(&["localhost", "127.0.0.1"]);
    let server = tls_server(chain, key);
    let port = server.addr.port();
    let script = |n: u32| {
        format!(
            r#"
for i = 1, {n} do
  local sock = ngx.socket.tcp()
  assert(sock:connect("127.0.0.1", {port}))
  assert(sock:sslhandshake(false, "localhost"))
  sock:close()
end
ngx.say("{n} handshakes")
"#
        )
    };
    let ten = script(10);
    let thirty = script(30);
    let site = Site::start(
        "tls_fuel",
        "tls_ca_file = \"ca.pem\"",
        "fuel = 200000000",
        &format!("outbound = [\"tcp://127.0.0.1:{port}\"]"),
        &[
            ("ca.pem", &ca.pem()),
            ("root/ten.lua", &ten),
            ("root/thirty.lua", &thirty),
        ],
    );
    let reply = site.get("/ten.lua");
    assert!(reply.is_ok_with("10 handshakes\n"), "{reply:?}");
    let reply = site.get("/thirty.lua");
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(!reply.body.contains("handshakes"), "{reply:?}");
}
