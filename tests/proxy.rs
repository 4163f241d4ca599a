//! Proxied locations (`proxy = "http://NAME"`), end to end: a real upstream
//! HTTP server on loopback started by the test (hyper, counting what it
//! receives), moonwall in front of it with a tenant whose policy grants the
//! upstream, real clients over sockets.

use crate::common;

use common::site::{Reply, Site, logged, send};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A test upstream on 127.0.0.1: every request it receives, and how many
/// connections it accepted.
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
    _runtime: tokio::runtime::Runtime,
}

impl Upstream {
    /// Answers by path: `/big/N` streams N bytes of `a` in 64 KiB chunks;
    /// `/hang` never answers; anything else echoes what it saw, with
    /// `Server: upstream/1.0` and two `Set-Cookie`s.
    fn start(name: &'static str) -> Upstream {
        Upstream::serve(name, None)
    }

    /// The same over TLS, with a certificate for `names` from `ca`.
    fn start_tls(name: &'static str, ca: &common::tls::TestCa, names: &[&str]) -> Upstream {
        use rustls::pki_types::pem::PemObject;
        let leaf = ca.leaf(names);
        let chain: Vec<rustls::pki_types::CertificateDer<'static>> =
            rustls::pki_types::CertificateDer::pem_slice_iter(leaf.certificate.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(moonwall::site::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        Upstream::serve(
            name,
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        )
    }

    fn serve(name: &'static str, tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (seen2, connections2) = (seen.clone(), connections.clone());
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                connections2.fetch_add(1, Ordering::SeqCst);
                let (seen, tls) = (seen2.clone(), tls.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let seen = seen.clone();
                        async move { Ok::<_, Infallible>(answer(name, request, &seen).await) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    let _ = match tls {
                        None => {
                            http.serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                .await
                        }
                        Some(tls) => match tls.accept(stream).await {
                            Ok(stream) => {
                                http.serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                    .await
                            }
                            Err(_) => return,
                        },
                    };
                });
            }
        });
        Upstream {
            addr,
            seen,
            connections,
            _runtime: runtime,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn answer(name: &str, request: Request<Incoming>, seen: &Mutex<Vec<Seen>>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path().to_string();
    seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        target: parts.uri.to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
    });
    if path == "/hang" {
        std::future::pending::<()>().await;
    }
    if let Some(size) = path.strip_prefix("/big/") {
        let size: usize = size.parse().unwrap();
        return Response::builder()
            .header("Content-Type", "text/plain")
            .body(BodyExt::boxed(Chunks { left: size }))
            .unwrap();
    }
    let text = format!(
        "{name} saw {} {} body={}",
        parts.method,
        parts.uri,
        String::from_utf8_lossy(&body)
    );
    Response::builder()
        .status(201)
        .header("Server", "upstream/1.0")
        .header("Content-Type", "text/x-upstream")
        .header("Set-Cookie", "a=1")
        .header("Set-Cookie", "b=2")
        .body(BodyExt::boxed(http_body_util::Full::new(Bytes::from(text))))
        .unwrap()
}

/// A body of `left` bytes of `a`, in 64 KiB frames (chunked on the wire).
struct Chunks {
    left: usize,
}

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = self.left.min(65536);
        self.left -= n;
        std::task::Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'a'; n])))))
    }
}

/// A tenant's site in front of `peers` (upstream `backend`, with the extra
/// keys `upstream_keys`), its one location `/` proxied there with the given
/// phase scripts (`("access", "...lua source...")`, ...).
fn gateway(
    name: &str,
    peers: &[SocketAddr],
    upstream_keys: &str,
    limits: &str,
    phases: &[(&str, &str)],
) -> Site {
    let peers: Vec<String> = peers.iter().map(|p| format!("\"{p}\"")).collect();
    let server_top = format!(
        "[upstreams.backend]\npeers = [{}]\n{upstream_keys}\n",
        peers.join(", ")
    );
    let mut location = String::from(
        "upstreams = [\"backend\"]\n\n[[location]]\npath = \"/\"\nproxy = \"http://backend\"\n",
    );
    let mut files = Vec::new();
    for (phase, source) in phases {
        location.push_str(&format!("{phase} = \"{phase}.lua\"\n"));
        files.push((format!("root/{phase}.lua"), source.to_string()));
    }
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, s)| (p.as_str(), s.as_str()))
        .collect();
    Site::start(name, &server_top, limits, &location, &files)
}

fn request(site: &Site, head: &str) -> Reply {
    send(site.addr, format!("{head}\r\n\r\n").as_bytes())
}

#[test]
fn an_access_check_rejects_before_the_upstream_and_filters_shape_its_answer() {
    let upstream = Upstream::start("backend");
    let site = gateway(
        "proxy_access",
        &[upstream.addr],
        "",
        "",
        &[
            (
                "access",
                r#"if ngx.var.http_x_api_key ~= "secret" then return ngx.exit(401) end
ngx.req.set_header("X-User", "alice")
ngx.req.clear_header("X-Api-Key")"#,
            ),
            (
                "header_filter",
                r#"ngx.header["Server"] = nil
ngx.header["X-Request-Id"] = "req-" .. ngx.var.remote_port
ngx.header["X-Upstream-Status"] = ngx.status"#,
            ),
            (
                "log",
                r#"ngx.log(ngx.WARN, "proxied to ", ngx.var.upstream_addr, " status ", ngx.var.upstream_status)"#,
            ),
        ],
    );

    // No key: the access phase answers, the upstream never sees it.
    let reply = request(
        &site,
        "GET /hello HTTP/1.1\r\nHost: localhost\r\nConnection: close",
    );
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(upstream.seen().len(), 0);
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 0);

    let reply = request(
        &site,
        "GET /hello/w%6Frld?x=1&y=%20 HTTP/1.1\r\nHost: localhost\r\nX-Api-Key: secret\r\nX-Forwarded-For: 203.0.113.9\r\nConnection: close",
    );
    assert_eq!(reply.status, 201, "{reply:?} {}", logged());
    assert_eq!(reply.body, "backend saw GET /hello/w%6Frld?x=1&y=%20 body=");
    assert_ne!(reply.header("server"), Some("upstream/1.0"), "{reply:?}");
    assert!(
        reply
            .header("x-request-id")
            .is_some_and(|id| id.starts_with("req-"))
    );
    assert_eq!(reply.header("x-upstream-status"), Some("201"));
    assert_eq!(reply.header("content-type"), Some("text/x-upstream"));
    let cookies: Vec<&str> = reply
        .head
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .collect();
    assert_eq!(cookies.len(), 2, "{reply:?}");

    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    let seen = &seen[0];
    assert_eq!(seen.method, "GET");
    assert_eq!(
        seen.target, "/hello/w%6Frld?x=1&y=%20",
        "the target as the client sent it"
    );
    assert_eq!(seen.header("x-user"), Some("alice"));
    assert_eq!(
        seen.header("x-api-key"),
        None,
        "the access phase removed it"
    );
    assert_eq!(seen.header("host"), Some("backend"), "nginx's $proxy_host");
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(seen.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        seen.header("connection"),
        None,
        "no hop-by-hop header is passed on"
    );
    assert!(seen.body.is_empty());

    // A POST's body goes along; the connection to the upstream is reused.
    let reply = request(
        &site,
        "POST /form HTTP/1.1\r\nHost: localhost\r\nX-Api-Key: secret\r\nContent-Length: 7\r\nConnection: close\r\n\r\na=1&b=2",
    );
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(reply.body, "backend saw POST /form body=a=1&b=2");
    assert_eq!(upstream.seen()[1].body, b"a=1&b=2");
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 1, "kept alive");
    let upstream_addr = upstream.addr.to_string();
    assert!(
        common::site::logged().contains(&format!("proxied to {upstream_addr} status 201")),
        "{}",
        logged()
    );
}

#[test]
fn a_body_filter_rewrites_a_streamed_body_chunk_by_chunk_in_bounded_memory() {
    const SIZE: usize = 24 << 20;
    let upstream = Upstream::start("backend");
    let site = gateway(
        "proxy_body_filter",
        &[upstream.addr],
        "",
        // Far less memory than the body: it has to stream through.
        "memory_mib = 8\ntimeout_ms = 60000\nmax_response_body_kib = 65536\nfuel = 100000000000",
        &[(
            "body_filter",
            r#"local chunk = ngx.arg[1]
if chunk ~= "" then ngx.arg[1] = string.upper(chunk) end"#,
        )],
    );
    let reply = request(
        &site,
        &format!("GET /big/{SIZE} HTTP/1.1\r\nHost: localhost\r\nConnection: close"),
    );
    assert_eq!(reply.status, 200, "{} {}", reply.head, logged());
    assert!(reply.complete, "{}", reply.head);
    assert_eq!(reply.body.len(), SIZE);
    assert!(reply.body.bytes().all(|b| b == b'A'));
}

#[test]
fn a_dead_peer_is_skipped_a_hanging_one_is_504_and_a_closing_one_502() {
    let upstream = Upstream::start("live");
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // A peer that takes the request and closes without an answer.
    let closing = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closing_addr = closing.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in closing.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buffer = [0u8; 4096];
            let _ = std::io::Read::read(&mut stream, &mut buffer);
            drop(stream);
        }
    });

    let site = gateway(
        "proxy_peers",
        &[dead, upstream.addr],
        "connect_timeout_ms = 2000\nread_timeout_ms = 1000\nsend_timeout_ms = 1000",
        "timeout_ms = 30000",
        &[(
            "log",
            r#"ngx.log(ngx.WARN, "peers ", ngx.var.upstream_addr, " status ", ngx.var.upstream_status)"#,
        )],
    );
    for _ in 0..2 {
        let reply = request(
            &site,
            "GET /a HTTP/1.1\r\nHost: localhost\r\nConnection: close",
        );
        assert_eq!(reply.status, 201, "{reply:?} {}", logged());
        assert_eq!(reply.body, "live saw GET /a body=");
    }
    // Round robin: one of the two requests started at the dead peer, and
    // went on to the live one.
    assert!(
        logged().contains(&format!("peers {dead}, {} status 201", upstream.addr)),
        "{}",
        logged()
    );

    let reply = request(
        &site,
        "GET /hang HTTP/1.1\r\nHost: localhost\r\nConnection: close",
    );
    assert_eq!(reply.status, 504, "{reply:?} {}", logged());

    let site = gateway("proxy_closing", &[closing_addr], "", "", &[]);
    let reply = request(
        &site,
        "GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close",
    );
    assert_eq!(reply.status, 502, "{reply:?} {}", logged());
}

#[test]
fn a_proxy_to_an_upstream_not_granted_is_refused_with_its_place() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("proxy_refused");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::create_dir_all(dir.join("root")).unwrap();
    std::fs::write(
        dir.join("moonwall.toml"),
        "policies = \"policies\"\n\n[upstreams.backend]\npeers = [\"127.0.0.1:9\"]\n\n[upstreams.billing]\npeers = [\"127.0.0.1:10\"]\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("policies/t.toml"),
        "tenant = \"t\"\nroot = \"../root\"\n\n[capabilities]\nupstreams = [\"backend\", \"payroll\"]\n\n[[location]]\npath = \"/\"\nproxy = \"http://billing\"\n",
    )
    .unwrap();
    let config = moonwall::tenants::ServerConfig::load(&dir.join("moonwall.toml")).unwrap();
    let error =
        moonwall::tenants::Registry::load(config, moonwall::tenants::metrics::Metrics::new())
            .err()
            .expect("refused")
            .to_string();
    let policy = dir.join("policies/t.toml").display().to_string();
    assert!(
        error.contains(&format!(
            "{policy}:5:25: upstreams: `payroll` is not declared in the server config"
        )),
        "{error}"
    );
    assert!(
        error.contains(&format!(
            "{policy}:9:9: proxy `http://billing`: no upstream `billing` is granted by this policy's [capabilities] upstreams (there are: backend)"
        )),
        "{error}"
    );
}

#[test]
fn an_https_upstream_is_verified_against_the_configured_ca() {
    let ca = common::tls::TestCa::new("moonwall proxy test CA");
    let good_upstream = Upstream::start_tls("tls-backend", &ca, &["backend"]);
    let wrong_upstream = Upstream::start_tls("tls-backend", &ca, &["elsewhere.example"]);
    let (good, wrong_name) = (good_upstream.addr, wrong_upstream.addr);
    let site_with = |name: &str, peer: SocketAddr| {
        let server_top = format!(
            "tls_ca_file = \"ca.pem\"\n\n[upstreams.backend]\npeers = [\"{peer}\"]\ntls = true\n"
        );
        let location = "upstreams = [\"backend\"]\n\n[[location]]\npath = \"/\"\nproxy = \"https://backend\"\nlog = \"log.lua\"\n";
        Site::start(
            name,
            &server_top,
            "",
            location,
            &[
                ("ca.pem", ca.pem().as_str()),
                (
                    "root/log.lua",
                    r#"ngx.log(ngx.WARN, "tls upstream ", ngx.var.upstream_addr, " ", ngx.var.upstream_status)"#,
                ),
            ],
        )
    };
    let site = site_with("proxy_tls", good);
    let reply = request(
        &site,
        "GET /x?y=1 HTTP/1.1\r\nHost: localhost\r\nConnection: close",
    );
    assert_eq!(reply.status, 201, "{reply:?} {}", logged());
    assert_eq!(reply.body, "tls-backend saw GET /x?y=1 body=");

    // A certificate for another name: no answer, and the log says why.
    let site = site_with("proxy_tls_wrong_name", wrong_name);
    let reply = request(
        &site,
        "GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close",
    );
    assert_eq!(reply.status, 502, "{reply:?}");
    assert!(
        logged().contains(&format!(
            "TLS handshake with {wrong_name}: certificate verify failed: certificate not valid for name \"backend\""
        )),
        "{}",
        logged()
    );
}

#[test]
fn a_proxys_scheme_must_match_its_upstream() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("proxy_scheme");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("site.toml"),
        "[upstreams.plain]\npeers = [\"127.0.0.1:9\"]\n\n[upstreams.secure]\npeers = [\"127.0.0.1:10\"]\ntls = true\n\n[[location]]\npath = \"/a/\"\nproxy = \"https://plain\"\n\n[[location]]\npath = \"/b/\"\nproxy = \"http://secure\"\n",
    )
    .unwrap();
    let error = moonwall::site::config::SiteConfig::load(&dir.join("site.toml"))
        .expect_err("refused")
        .to_string();
    let file = dir.join("site.toml").display().to_string();
    assert!(
        error.contains(&format!(
            "{file}:10:9: proxy `https://plain`: upstream `plain` is plain HTTP"
        )),
        "{error}"
    );
    assert!(
        error.contains(&format!(
            "{file}:14:9: proxy `http://secure`: upstream `secure` speaks TLS"
        )),
        "{error}"
    );
}

#[test]
fn a_balancer_spreads_requests_over_the_peers_and_retries_a_dead_one() {
    let one = Upstream::start("one");
    let two = Upstream::start("two");
    let three = Upstream::start("three");
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let peers = [dead, one.addr, two.addr, three.addr];
    let balancer = format!(
        r#"local balancer = require "ngx.balancer"
local peers = {{ "{}", "{}", "{}", "{}" }}
local state, status = balancer.get_last_failure()
if not state then
  ngx.ctx.i = tonumber(ngx.var.arg_n)
  assert(balancer.set_more_tries(3))
else
  ngx.ctx.i = ngx.ctx.i + 1
  ngx.ctx.failed = (ngx.ctx.failed or "") .. state .. " " .. status
end
if ngx.var.arg_elsewhere then
  assert(balancer.set_current_peer("127.0.0.1", 1))
else
  local host, port = peers[ngx.ctx.i]:match("^(.*):(%d+)$")
  assert(balancer.set_current_peer(host, tonumber(port)))
end"#,
        peers[0], peers[1], peers[2], peers[3]
    );
    let site = gateway(
        "proxy_balancer",
        &peers,
        "",
        "",
        &[
            ("balancer", &balancer),
            (
                "log",
                r#"ngx.log(ngx.WARN, "balanced to ", ngx.var.upstream_addr, " after ", tostring(ngx.ctx.failed))"#,
            ),
        ],
    );
    for (n, name) in [(2, "one"), (3, "two"), (4, "three"), (2, "one")] {
        let reply = request(
            &site,
            &format!("GET /?n={n} HTTP/1.1\r\nHost: localhost\r\nConnection: close"),
        );
        assert_eq!(reply.status, 201, "{reply:?} {}", logged());
        assert_eq!(reply.body, format!("{name} saw GET /?n={n} body="));
    }
    assert_eq!(
        (one.seen().len(), two.seen().len(), three.seen().len()),
        (2, 1, 1)
    );

    // The dead peer first: the balancer runs again, told of the failure.
    let reply = request(
        &site,
        "GET /?n=1 HTTP/1.1\r\nHost: localhost\r\nConnection: close",
    );
    assert_eq!(reply.status, 201, "{reply:?} {}", logged());
    assert_eq!(reply.body, "one saw GET /?n=1 body=");
    assert!(
        logged().contains(&format!(
            "balanced to {dead}, {} after failed 502",
            one.addr
        )),
        "{}",
        logged()
    );

    // A peer that is not the upstream's is refused by the host.
    let reply = request(
        &site,
        "GET /?n=2&elsewhere=1 HTTP/1.1\r\nHost: localhost\r\nConnection: close",
    );
    assert_eq!(reply.status, 500, "{reply:?}");
    assert!(
        logged().contains("proxy: peer \"127.0.0.1:1\" is not one of upstream backend's"),
        "{}",
        logged()
    );
    assert_eq!(
        one.seen().len(),
        3,
        "nothing reached a peer for the refused pick"
    );
}
