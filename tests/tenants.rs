//! Tenants end to end: a server config with a policies directory, each test
//! in a temp dir of its own (moonwall.toml, policies/, tenant roots), a real
//! server driven over sockets. Most servers run in-process (an
//! [`App::with_registry`] on 127.0.0.1:0, the tests calling
//! [`Registry::reload`] themselves); the reload loop, the JSON access log
//! and the script log levels go through the real binary.
//!
//! The tests hold one lock while they run: they measure time and flood the
//! server, and on a 2-core machine they would otherwise disturb each other.

use crate::common;

use common::site::{Reply, capture_logs, logged, send, shared_sandbox as sandbox};

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use moonwall::http::server::{App, Server as HttpServer, ServerSettings, ServerThread};
use moonwall::tenants::metrics::Metrics;
use moonwall::tenants::{Registry, ServerConfig};

// ---------------------------------------------------------------------------
// Set-up shared by the tests
// ---------------------------------------------------------------------------

/// One test at a time (see the module comment).
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Poll `condition` until it holds or `within` is over.
fn eventually(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// Files: the server config, policies, tenant roots
// ---------------------------------------------------------------------------

/// A fresh test directory: `moonwall.toml` (with `top` among its top-level
/// keys), `policies/` and the given files.
fn layout(name: &str, top: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("tenants")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(dir.join("moonwall.toml"), server_toml(top)).unwrap();
    for (path, contents) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }
    dir
}

fn server_toml(top: &str) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\npolicies = \"policies\"\n{top}\n\n[limits]\nmemory_mib = 128\n"
    )
}

/// A policy: tenant `name` on `hosts`, its root `roots/NAME`, the lines of
/// its `[limits]` and `[capabilities]`.
fn policy(name: &str, hosts: &[&str], limits: &str, capabilities: &str) -> String {
    let hosts: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
    format!(
        "tenant = \"{name}\"\nhosts = [{}]\nroot = \"../roots/{name}\"\n\n[limits]\n{limits}\n\n[capabilities]\n{capabilities}\n",
        hosts.join(", ")
    )
}

/// Replace a file the way deployment tools do: write a temp file beside it
/// (hidden, so neither a policy nor a served file), then rename it over.
fn replace(path: &Path, contents: &str) {
    let name = path.file_name().unwrap().to_string_lossy();
    let temp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&temp, contents).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

/// A script that keeps its instance busy for `ms` of wall-clock time.
fn busy(ms: u64) -> String {
    format!(
        "local t = os.clock() while os.clock() - t < {} do end ngx.say('done')",
        ms as f64 / 1000.0
    )
}

/// Enough fuel that a busy script is stopped by time, never by fuel.
const PLENTY_OF_FUEL: &str = "fuel = 100000000000";

// ---------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------

/// A server in this process, with its metrics listener, on ephemeral ports.
struct Server {
    addr: SocketAddr,
    metrics_addr: SocketAddr,
    registry: Arc<Registry>,
    /// Stopped gracefully when the server is dropped.
    _server: ServerThread,
}

impl Server {
    fn start(config: &Path) -> Server {
        capture_logs();
        let mut config = ServerConfig::load(config).unwrap_or_else(|e| panic!("{e}"));
        // Init scripts run in the server's sandbox.
        config.sandbox = Some(sandbox());
        let registry =
            Arc::new(Registry::load(config, Metrics::new()).unwrap_or_else(|e| panic!("{e}")));
        let app = App::with_registry(
            sandbox(),
            registry.clone(),
            ServerSettings {
                max_running: 32,
                shutdown_grace: Duration::from_secs(2),
                ..ServerSettings::default()
            },
        );
        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
        let server = HttpServer::spawn(app, &[loopback], Some(loopback), 2).unwrap();
        Server {
            addr: server.addr(),
            metrics_addr: server.metrics_addr.expect("a metrics address was given"),
            registry,
            _server: server,
        }
    }

    fn get(&self, host: &str, path: &str) -> Reply {
        get(self.addr, host, path)
    }

    /// The metrics as Prometheus scrapes them.
    fn metrics(&self) -> String {
        let reply = get(self.metrics_addr, "localhost", "/metrics");
        assert_eq!(reply.status, 200, "{reply:?}");
        reply.body
    }

    /// Wait until every series in `expected` has its value (the access log
    /// and the metrics are written as a request ends, after its response).
    #[track_caller]
    fn assert_metrics(&self, expected: &[&str]) -> String {
        let mut text = String::new();
        let all_there = eventually(Duration::from_secs(5), || {
            text = self.metrics();
            expected.iter().all(|line| text.lines().any(|l| l == *line))
        });
        if !all_there {
            let missing: Vec<&&str> = expected
                .iter()
                .filter(|line| !text.lines().any(|l| l == **line))
                .collect();
            panic!("missing {missing:#?} in:\n{text}");
        }
        text
    }
}

/// `moonwall serve --config FILE` as a child process; killed when dropped.
struct Binary {
    child: Child,
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Binary {
    fn start(config: &Path, args: &[&str]) -> Binary {
        let mut child = Command::new(env!("CARGO_BIN_EXE_moonwall"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .args(args)
            .env("MOONWALL_CACHE_DIR", common::cache_dir())
            .env("MOONWALL_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("moonwall starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn({
            let lines = lines.clone();
            move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    lines.lock().unwrap().push(line);
                }
            }
        });
        let mut binary = Binary {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            lines,
        };
        let mut addr = None;
        let listening = eventually(Duration::from_secs(60), || {
            addr = binary.lines.lock().unwrap().iter().find_map(|line| {
                let rest = line.split("listening on http://").nth(1)?;
                let end = rest
                    .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
                    .unwrap_or(rest.len());
                rest[..end].parse().ok()
            });
            addr.is_some() || binary.child.try_wait().ok().flatten().is_some()
        });
        match addr {
            Some(addr) if listening => binary.addr = addr,
            _ => panic!("moonwall serve did not start:\n{}", binary.log()),
        }
        binary
    }

    fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Wait until a log line contains `text`.
    fn wait_log(&self, text: &str, within: Duration) -> bool {
        eventually(within, || {
            self.lines.lock().unwrap().iter().any(|l| l.contains(text))
        })
    }

    fn get(&self, host: &str, path: &str) -> Reply {
        get(self.addr, host, path)
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// A small HTTP/1.1 client over raw sockets
// ---------------------------------------------------------------------------

fn get(addr: SocketAddr, host: &str, path: &str) -> Reply {
    send(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

fn post(addr: SocketAddr, host: &str, path: &str, body: &[u8]) -> Reply {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    send(addr, &request)
}

/// Clients sending one request after another until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<std::thread::JoinHandle<Vec<Reply>>>,
}

impl Load {
    fn start(addr: SocketAddr, host: &str, path: &str, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..clients)
            .map(|_| {
                let (stop, host, path) = (stop.clone(), host.to_string(), path.to_string());
                std::thread::spawn(move || {
                    let mut replies = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        replies.push(get(addr, &host, &path));
                    }
                    replies
                })
            })
            .collect();
        Load { stop, clients }
    }

    /// Stop the clients; each one's replies, in order.
    fn finish(self) -> Vec<Vec<Reply>> {
        self.stop.store(true, Ordering::Relaxed);
        self.clients
            .into_iter()
            .map(|client| client.join().unwrap())
            .collect()
    }
}

/// Every reply a complete 200 with one of `bodies`; how many there were.
#[track_caller]
fn assert_all_served(clients: &[Vec<Reply>], bodies: &[&str]) -> usize {
    let mut count = 0;
    for reply in clients.iter().flatten() {
        assert!(
            reply.status == 200 && reply.complete && bodies.contains(&reply.body.as_str()),
            "a failed request under load: {reply:?}"
        );
        count += 1;
    }
    count
}

/// Each client saw `old`, then (once it saw `new`) only `new`, and ended on it.
#[track_caller]
fn assert_switched(clients: &[Vec<Reply>], old: &str, new: &str) {
    assert_all_served(clients, &[old, new]);
    assert!(
        clients.iter().flatten().any(|r| r.body == old),
        "the old version never served"
    );
    for replies in clients {
        let first_new = replies
            .iter()
            .position(|r| r.body == new)
            .expect("every client sees the new version");
        assert!(
            replies[first_new..].iter().all(|r| r.body == new),
            "the old version came back after the new one served"
        );
    }
}

// ---------------------------------------------------------------------------
// 1. Which tenant a request is for
// ---------------------------------------------------------------------------

#[test]
fn hosts_pick_the_tenant_each_with_its_own_root() {
    let _serial = serial();
    let dir = layout(
        "hosts",
        "",
        &[
            ("policies/a.toml", &policy("a", &["a.test"], "", "")),
            ("policies/w.toml", &policy("w", &["*.w.test"], "", "")),
            ("roots/a/whoami.lua", "ngx.say('I am a')"),
            ("roots/w/whoami.lua", "ngx.say('I am w')"),
        ],
    );
    std::fs::write(
        dir.join("with-default.toml"),
        server_toml("default_tenant = \"a\""),
    )
    .unwrap();
    let server = Server::start(&dir.join("moonwall.toml"));
    let a = "I am a\n";
    let w = "I am w\n";
    for (host, expected) in [
        ("a.test", Some(a)),
        ("A.Test", Some(a)),
        ("a.test:8080", Some(a)),
        ("a.test.", Some(a)),
        ("x.w.test", Some(w)),
        ("x.y.w.test", Some(w)),
        ("X.W.TEST:1234", Some(w)),
        // A wildcard does not cover its bare name, an exact name no subdomain.
        ("w.test", None),
        ("b.a.test", None),
        ("nobody.test", None),
        ("127.0.0.1", None),
    ] {
        let reply = server.get(host, "/whoami");
        match expected {
            Some(body) => assert!(reply.is_ok_with(body), "{host}: {reply:?}"),
            None => assert_eq!(reply.status, 404, "{host}: {reply:?}"),
        }
    }
    // No Host at all (HTTP/1.0) has no tenant either.
    let no_host = send(server.addr, b"GET /whoami HTTP/1.0\r\n\r\n");
    assert_eq!(no_host.status, 404, "{no_host:?}");
    // An absolute-form target's authority wins over the Host header.
    let absolute = send(
        server.addr,
        b"GET http://a.test/whoami HTTP/1.1\r\nHost: x.w.test\r\nConnection: close\r\n\r\n",
    );
    assert!(absolute.is_ok_with(a), "{absolute:?}");

    // HTTP/2 without TLS: the :authority picks the tenant.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let h2: Vec<(u16, String)> = runtime.block_on(async {
        use http_body_util::BodyExt;
        let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        let mut answers = Vec::new();
        for authority in ["a.test:8443", "deep.x.w.test", "nobody.test"] {
            let request = hyper::Request::builder()
                .uri(format!("http://{authority}/whoami"))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            answers.push((status, String::from_utf8_lossy(&body).into_owned()));
        }
        answers
    });
    assert_eq!(h2[0], (200, a.to_string()));
    assert_eq!(h2[1], (200, w.to_string()));
    assert_eq!(h2[2].0, 404);
    drop(server);

    // With a default tenant, hosts no policy names go to it.
    let server = Server::start(&dir.join("with-default.toml"));
    for host in ["nobody.test", "w.test", "127.0.0.1", "a.test"] {
        let reply = server.get(host, "/whoami");
        assert!(reply.is_ok_with(a), "{host}: {reply:?}");
    }
    assert!(server.get("x.w.test", "/whoami").is_ok_with(w));
    let no_host = send(server.addr, b"GET /whoami HTTP/1.0\r\n\r\n");
    assert!(no_host.is_ok_with(a), "{no_host:?}");
}

// ---------------------------------------------------------------------------
// 2. Limits from policies
// ---------------------------------------------------------------------------

#[test]
fn each_tenant_is_held_to_the_limits_of_its_policy() {
    let _serial = serial();
    let dir = layout(
        "limits",
        "",
        &[
            (
                "policies/t1.toml",
                &policy(
                    "t1",
                    &["t1.test"],
                    &format!("timeout_ms = 200\n{PLENTY_OF_FUEL}"),
                    "",
                ),
            ),
            (
                "policies/t2.toml",
                &policy(
                    "t2",
                    &["t2.test"],
                    &format!("timeout_ms = 1000\n{PLENTY_OF_FUEL}"),
                    "",
                ),
            ),
            (
                "policies/mem.toml",
                &policy("mem", &["mem.test"], "memory_mib = 8", ""),
            ),
            (
                "policies/fuel.toml",
                &policy("fuel", &["fuel.test"], "fuel = 20000000", ""),
            ),
            (
                "policies/body.toml",
                &policy("body", &["body.test"], "max_request_body_kib = 1", ""),
            ),
            (
                "policies/out.toml",
                &policy("out", &["out.test"], "max_response_body_kib = 1", ""),
            ),
            ("roots/t1/loop.lua", "while true do end"),
            ("roots/t2/loop.lua", "while true do end"),
            ("roots/t2/busy.lua", &busy(400)),
            (
                "roots/mem/alloc.lua",
                "local t = {} for i = 1, 64 do t[i] = string.rep('x', 1 << 20) .. i end ngx.say('survived')",
            ),
            ("roots/mem/small.lua", "ngx.say(#string.rep('x', 1 << 20))"),
            ("roots/fuel/loop.lua", "while true do end"),
            ("roots/fuel/ok.lua", "ngx.say('ok')"),
            (
                "roots/body/echo.lua",
                "ngx.req.read_body() ngx.say(#(ngx.req.get_body_data() or ''))",
            ),
            ("roots/out/exact.lua", "ngx.print(string.rep('x', 1024))"),
            ("roots/out/over.lua", "ngx.print(string.rep('x', 1025))"),
        ],
    );
    let server = Server::start(&dir.join("moonwall.toml"));

    // Time: 200 ms for t1...
    let started = Instant::now();
    let reply = server.get("t1.test", "/loop");
    let elapsed = started.elapsed();
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(
        elapsed >= Duration::from_millis(150) && elapsed < Duration::from_millis(1000),
        "t1's loop ran {elapsed:?} under timeout_ms = 200"
    );
    // ...while t2 has the time to finish 400 ms of work, and no more.
    let reply = server.get("t2.test", "/busy");
    assert!(reply.is_ok_with("done\n"), "{reply:?}");
    let started = Instant::now();
    assert_eq!(server.get("t2.test", "/loop").status, 503);
    assert!(started.elapsed() >= Duration::from_millis(900));

    // Memory: 8 MiB is enough for a 1 MiB string, not for 64 of them.
    assert!(server.get("mem.test", "/small").is_ok_with("1048576\n"));
    let reply = server.get("mem.test", "/alloc");
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(!reply.body.contains("survived"));

    // Fuel: a small budget stops a loop long before its time is up.
    assert!(server.get("fuel.test", "/ok").is_ok_with("ok\n"));
    let started = Instant::now();
    let reply = server.get("fuel.test", "/loop");
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(started.elapsed() < Duration::from_secs(3));

    // The request body: 1 KiB is accepted, a byte more is 413, whether the
    // length is declared or the body is chunked.
    let reply = post(server.addr, "body.test", "/echo", &[b'x'; 1024]);
    assert!(reply.is_ok_with("1024\n"), "{reply:?}");
    let reply = post(server.addr, "body.test", "/echo", &[b'x'; 1025]);
    assert_eq!(reply.status, 413, "{reply:?}");
    let chunked = send(
        server.addr,
        format!(
            "POST /echo HTTP/1.1\r\nHost: body.test\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{}\r\n0\r\n\r\n",
            2000,
            "y".repeat(2000)
        )
        .as_bytes(),
    );
    assert_eq!(chunked.status, 413, "{chunked:?}");

    // The response body: exactly 1 KiB goes out whole. A byte more stops
    // the script; its head (200) was already sent when it first wrote, so
    // the response is cut short: never a clean end, never more than 1 KiB.
    let reply = server.get("out.test", "/exact");
    assert!(reply.is_ok_with(&"x".repeat(1024)), "{reply:?}");
    let reply = server.get("out.test", "/over");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        !reply.complete,
        "an over-long response ended cleanly: {reply:?}"
    );
    assert!(reply.body.len() <= 1024, "{reply:?}");

    // Each limit is counted, under its tenant and its kind.
    server.assert_metrics(&[
        r#"moonwall_limit_hits_total{tenant="t1",kind="time"} 1"#,
        r#"moonwall_limit_hits_total{tenant="t2",kind="time"} 1"#,
        r#"moonwall_limit_hits_total{tenant="mem",kind="memory"} 1"#,
        r#"moonwall_limit_hits_total{tenant="fuel",kind="fuel"} 1"#,
        r#"moonwall_limit_hits_total{tenant="body",kind="body"} 2"#,
        r#"moonwall_limit_hits_total{tenant="out",kind="output"} 1"#,
        r#"moonwall_requests_total{tenant="t1",status="503",outcome="limit-time"} 1"#,
        r#"moonwall_requests_total{tenant="out",status="200",outcome="limit-output"} 1"#,
        r#"moonwall_requests_total{tenant="body",status="413",outcome="body-too-large"} 2"#,
    ]);
}

// ---------------------------------------------------------------------------
// 3. Admission: concurrency with a bounded queue, and the request rate
// ---------------------------------------------------------------------------

#[test]
fn a_tenant_over_its_concurrency_is_refused_with_retry_after() {
    let _serial = serial();
    let dir = layout(
        "concurrency",
        "",
        &[
            (
                "policies/one.toml",
                &policy(
                    "one",
                    &["one.test"],
                    &format!(
                        "max_concurrency = 1\nmax_queue = 1\nqueue_timeout_ms = 300\n{PLENTY_OF_FUEL}"
                    ),
                    "",
                ),
            ),
            ("roots/one/slow.lua", &busy(500)),
        ],
    );
    let server = Server::start(&dir.join("moonwall.toml"));
    let addr = server.addr;
    let start = Arc::new(Barrier::new(3));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                get(addr, "one.test", "/slow")
            })
        })
        .collect();
    let mut replies: Vec<Reply> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    replies.sort_by_key(|r| r.status);
    assert!(replies[0].is_ok_with("done\n"), "{replies:#?}");
    for refused in &replies[1..] {
        assert_eq!(refused.status, 503, "{replies:#?}");
        let retry_after: u64 = refused
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no Retry-After in {refused:?}"));
        assert!(retry_after >= 1, "{refused:?}");
    }
    // One waited in the queue until its timeout, the other found it full.
    server.assert_metrics(&[
        r#"moonwall_requests_total{tenant="one",status="200",outcome="ok"} 1"#,
        r#"moonwall_requests_total{tenant="one",status="503",outcome="queue-full"} 1"#,
        r#"moonwall_requests_total{tenant="one",status="503",outcome="queue-timeout"} 1"#,
        r#"moonwall_queue_depth{tenant="one"} 0"#,
        r#"moonwall_running{tenant="one"} 0"#,
    ]);
    // The slot is free again.
    assert!(server.get("one.test", "/slow").is_ok_with("done\n"));
}

#[test]
fn a_tenant_over_its_rate_gets_429_with_retry_after() {
    let _serial = serial();
    let dir = layout(
        "rate",
        "",
        &[
            (
                "policies/r.toml",
                &policy("r", &["r.test"], "requests_per_second = 2\nburst = 2", ""),
            ),
            (
                "policies/free.toml",
                &policy("free", &["free.test"], "", ""),
            ),
            ("roots/r/index.lua", "ngx.say('ok')"),
            ("roots/free/index.lua", "ngx.say('free')"),
        ],
    );
    let server = Server::start(&dir.join("moonwall.toml"));
    let started = Instant::now();
    let replies: Vec<Reply> = (0..5).map(|_| server.get("r.test", "/")).collect();
    let elapsed = started.elapsed();
    let served = replies.iter().filter(|r| r.is_ok_with("ok\n")).count();
    let limited: Vec<&Reply> = replies.iter().filter(|r| r.status == 429).collect();
    assert!(served >= 2, "{replies:#?}");
    assert_eq!(served + limited.len(), 5, "{replies:#?}");
    // At 2 a second, 5 requests in well under a second cannot all pass.
    if elapsed < Duration::from_millis(900) {
        assert!(!limited.is_empty(), "{replies:#?}");
    }
    for reply in &limited {
        let retry_after: u64 = reply
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no Retry-After in {reply:?}"));
        assert!(retry_after >= 1, "{reply:?}");
    }
    // The rate is the tenant's own: another tenant is not limited.
    for _ in 0..5 {
        assert!(server.get("free.test", "/").is_ok_with("free\n"));
    }
    // Tokens come back at the rate.
    std::thread::sleep(Duration::from_millis(1100));
    assert!(server.get("r.test", "/").is_ok_with("ok\n"));
}

// ---------------------------------------------------------------------------
// 4. Hot reload (in-process: the tests call Registry::reload)
// ---------------------------------------------------------------------------

#[test]
fn a_script_edited_under_load_switches_without_a_failed_request() {
    let _serial = serial();
    let dir = layout(
        "reload-script",
        "",
        &[
            ("policies/s.toml", &policy("s", &["s.test"], "", "")),
            ("roots/s/edited.lua", "ngx.say('old text')"),
        ],
    );
    let server = Server::start(&dir.join("moonwall.toml"));
    let load = Load::start(server.addr, "s.test", "/edited", 4);
    std::thread::sleep(Duration::from_millis(600));
    replace(&dir.join("roots/s/edited.lua"), "ngx.say('new text')");
    std::thread::sleep(Duration::from_millis(900));
    let clients = load.finish();
    assert_switched(&clients, "old text\n", "new text\n");
}

#[test]
fn a_script_with_a_syntax_error_keeps_the_previous_version_serving() {
    let _serial = serial();
    let dir = layout(
        "reload-syntax",
        "",
        &[
            ("policies/s.toml", &policy("s", &["s.test"], "", "")),
            ("roots/s/fragile.lua", "ngx.say('good version')"),
        ],
    );
    let server = Server::start(&dir.join("moonwall.toml"));
    assert!(
        server
            .get("s.test", "/fragile")
            .is_ok_with("good version\n")
    );
    let script = dir.join("roots/s/fragile.lua");
    let load = Load::start(server.addr, "s.test", "/fragile", 2);
    std::thread::sleep(Duration::from_millis(200));
    replace(&script, "ngx.say('broken version'");
    std::thread::sleep(Duration::from_millis(500));
    let clients = load.finish();
    assert_all_served(&clients, &["good version\n"]);
    assert!(
        server
            .get("s.test", "/fragile")
            .is_ok_with("good version\n")
    );
    let log = logged();
    let complaint = log
        .lines()
        .find(|l| l.contains("keeping the previous version of fragile.lua serving"))
        .unwrap_or_else(|| panic!("no complaint about fragile.lua in the log:\n{log}"));
    assert!(complaint.contains("fragile.lua:1:"), "{complaint}");
    // Logged once for that version, not at every request.
    assert_eq!(
        log.matches("keeping the previous version of fragile.lua")
            .count(),
        1,
        "{log}"
    );

    // Fixed, the new version serves.
    replace(&script, "ngx.say('fixed version')");
    assert!(
        server
            .get("s.test", "/fragile")
            .is_ok_with("fixed version\n")
    );
}

#[test]
fn a_policy_edited_under_load_takes_effect_without_a_failed_request() {
    let _serial = serial();
    let file_of = |timeout: u64, hosts: &[&str]| {
        policy(
            "p",
            hosts,
            &format!("timeout_ms = {timeout}\n{PLENTY_OF_FUEL}"),
            "",
        )
    };
    let dir = layout(
        "reload-policy",
        "",
        &[
            ("policies/p.toml", &file_of(1000, &["p.test"])),
            ("roots/p/hi.lua", "ngx.say('hi')"),
            ("roots/p/slow.lua", &busy(300)),
        ],
    );
    let server = Server::start(&dir.join("moonwall.toml"));
    assert!(server.get("p.test", "/slow").is_ok_with("done\n"));
    assert_eq!(server.get("p2.test", "/hi").status, 404);
    assert!(!server.registry.changed());

    let load = Load::start(server.addr, "p.test", "/hi", 4);
    std::thread::sleep(Duration::from_millis(300));
    // A request in flight keeps the policy it started with.
    let addr = server.addr;
    let in_flight = std::thread::spawn(move || get(addr, "p.test", "/slow"));
    std::thread::sleep(Duration::from_millis(100));
    replace(
        &dir.join("policies/p.toml"),
        &file_of(100, &["p.test", "p2.test"]),
    );
    assert!(server.registry.changed());
    let report = server.registry.reload();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(!server.registry.changed());
    std::thread::sleep(Duration::from_millis(500));
    let clients = load.finish();
    assert_all_served(&clients, &["hi\n"]);
    let in_flight = in_flight.join().unwrap();
    assert!(in_flight.is_ok_with("done\n"), "{in_flight:?}");

    // The new hosts and the new timeout apply to new requests.
    assert!(server.get("p2.test", "/hi").is_ok_with("hi\n"));
    assert_eq!(server.get("p.test", "/slow").status, 503);
    server.assert_metrics(&[r#"moonwall_reloads_total{tenant="p",result="ok"} 1"#]);
}

#[test]
fn a_broken_policy_keeps_the_previous_version_until_it_is_fixed() {
    let _serial = serial();
    let dir = layout(
        "reload-broken-policy",
        "",
        &[
            (
                "policies/d.toml",
                &policy(
                    "d",
                    &["d.test"],
                    &format!("timeout_ms = 1000\n{PLENTY_OF_FUEL}"),
                    "",
                ),
            ),
            ("roots/d/hi.lua", "ngx.say('hi')"),
            ("roots/d/slow.lua", &busy(300)),
        ],
    );
    let server = Server::start(&dir.join("moonwall.toml"));
    let file = dir.join("policies/d.toml");
    let broken = "tenant = \"d\"\nhosts = [\"d.test\", \"d2.test\"]\nroot = \"../roots/d\"\n\n[limits]\ntimeout_ms = 100\ncolour = \"blue\"\n";
    replace(&file, broken);
    let load = Load::start(server.addr, "d.test", "/hi", 2);
    let report = server.registry.reload();
    std::thread::sleep(Duration::from_millis(300));
    assert_all_served(&load.finish(), &["hi\n"]);
    assert_eq!(report.kept, ["d"]);
    let place = format!("{}:7:1: ", file.display());
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.starts_with(&place) && p.contains("colour")),
        "{:?}",
        report.problems
    );
    let log = logged();
    assert!(
        log.lines()
            .any(|l| l.contains("reload: ") && l.contains(&place)),
        "{log}"
    );
    // Nothing of the broken version applies: not its host, not its timeout.
    assert_eq!(server.get("d2.test", "/hi").status, 404);
    assert!(server.get("d.test", "/slow").is_ok_with("done\n"));

    // Fixed, it takes effect.
    replace(&file, &broken.replace("colour = \"blue\"\n", ""));
    let report = server.registry.reload();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(server.get("d2.test", "/hi").is_ok_with("hi\n"));
    assert_eq!(server.get("d.test", "/slow").status, 503);
    server.assert_metrics(&[
        r#"moonwall_reloads_total{tenant="d",result="failed"} 1"#,
        r#"moonwall_reloads_total{tenant="d",result="ok"} 1"#,
    ]);
}

#[test]
fn policy_files_added_and_removed_add_and_remove_tenants() {
    let _serial = serial();
    let dir = layout(
        "reload-add-remove",
        "",
        &[
            ("policies/old.toml", &policy("old", &["old.test"], "", "")),
            ("roots/old/index.lua", "ngx.say('old tenant')"),
            ("roots/new/index.lua", "ngx.say('new tenant')"),
        ],
    );
    let server = Server::start(&dir.join("moonwall.toml"));
    assert!(server.get("old.test", "/").is_ok_with("old tenant\n"));
    assert_eq!(server.get("new.test", "/").status, 404);

    replace(
        &dir.join("policies/new.toml"),
        &policy("new", &["new.test", "*.new.test"], "", ""),
    );
    assert!(server.registry.changed());
    let report = server.registry.reload();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(server.get("new.test", "/").is_ok_with("new tenant\n"));
    assert!(server.get("www.new.test", "/").is_ok_with("new tenant\n"));
    assert!(server.get("old.test", "/").is_ok_with("old tenant\n"));

    std::fs::remove_file(dir.join("policies/old.toml")).unwrap();
    assert!(server.registry.changed());
    let report = server.registry.reload();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(server.get("old.test", "/").status, 404);
    assert!(server.get("new.test", "/").is_ok_with("new tenant\n"));
    assert!(server.registry.current().by_name("old").is_none());
}

#[test]
fn an_edit_that_claims_another_tenants_host_is_refused() {
    let _serial = serial();
    let dir = layout(
        "reload-host-steal",
        "",
        &[
            ("policies/a.toml", &policy("a", &["a.test"], "", "")),
            ("policies/z.toml", &policy("z", &["z.test"], "", "")),
            ("roots/a/whoami.lua", "ngx.say('I am a')"),
            ("roots/z/whoami.lua", "ngx.say('I am z')"),
        ],
    );
    let server = Server::start(&dir.join("moonwall.toml"));
    assert!(server.get("z.test", "/whoami").is_ok_with("I am z\n"));
    // a.toml (read before z.toml) now also claims z.test.
    replace(
        &dir.join("policies/a.toml"),
        &policy("a", &["a.test", "z.test"], "", ""),
    );
    let report = server.registry.reload();
    // The conflict is reported...
    assert!(
        report.problems.iter().any(|p| p.contains("z.test")),
        "{:?}",
        report.problems
    );
    // ...and the tenant whose policy did not change keeps its host.
    let reply = server.get("z.test", "/whoami");
    assert!(reply.is_ok_with("I am z\n"), "z.test now answers {reply:?}");
    assert!(server.registry.current().by_name("z").is_some());
    // The edit is what is refused: a keeps its previous version.
    assert_eq!(report.kept, ["a"]);
}

/// What `moonwall serve` does at every poll is `if changed() { reload() }`:
/// a broken file is read (and its error logged and counted) once per change.
#[test]
fn a_broken_policy_is_refused_once_not_at_every_poll() {
    let _serial = serial();
    let dir = layout(
        "reload-broken-once",
        "",
        &[
            ("policies/b.toml", &policy("b", &["b.test"], "", "")),
            ("roots/b/index.lua", "ngx.say('b')"),
        ],
    );
    let config = ServerConfig::load(&dir.join("moonwall.toml")).unwrap();
    let registry = Registry::load(config, Metrics::new()).unwrap();
    replace(
        &dir.join("policies/b.toml"),
        &policy("b", &["b.test"], "colour = \"blue\"", ""),
    );
    assert!(registry.changed());
    let report = registry.reload();
    assert_eq!(report.kept, ["b"]);
    // What `moonwall serve` does at every poll (serve.rs reload_loop).
    for _ in 0..3 {
        if registry.changed() {
            registry.reload();
        }
    }
    let text = registry.metrics.render();
    assert!(
        text.contains("moonwall_reloads_total{tenant=\"b\",result=\"failed\"} 1\n"),
        "one change, one failed reload:\n{text}"
    );
    assert!(
        !registry.changed(),
        "nothing changed since the broken version was refused"
    );

    // A broken new file, too: refused once, read again when it changes.
    let fresh = dir.join("policies/fresh.toml");
    replace(&fresh, "tenant = \"fresh\"\n");
    assert!(registry.changed());
    let report = registry.reload();
    assert!(
        report.problems.iter().any(|p| p.contains("fresh.toml")),
        "{:?}",
        report.problems
    );
    assert!(!registry.changed());
    replace(&fresh, &policy("fresh", &["fresh.test"], "", ""));
    std::fs::create_dir_all(dir.join("roots/fresh")).unwrap();
    assert!(registry.changed());
    let report = registry.reload();
    // (b.toml, still broken, is reported again by every reload.)
    assert!(
        !report.problems.iter().any(|p| p.contains("fresh.toml")),
        "{:?}",
        report.problems
    );
    assert!(registry.current().by_name("fresh").is_some());
    assert!(!registry.changed());
}

/// A reload that leaves a tenant's admission limits alone keeps its
/// admission state: requests running across it still count.
#[test]
fn a_reload_keeps_the_admission_state_of_unchanged_limits() {
    let _serial = serial();
    let file_of = |timeout: u64| {
        policy(
            "q",
            &["q.test"],
            &format!(
                "max_concurrency = 1\nmax_queue = 0\ntimeout_ms = {timeout}\n{PLENTY_OF_FUEL}"
            ),
            "",
        )
    };
    let dir = layout(
        "reload-admission",
        "",
        &[
            ("policies/q.toml", &file_of(2000)),
            ("roots/q/slow.lua", &busy(600)),
        ],
    );
    let server = Server::start(&dir.join("moonwall.toml"));
    let addr = server.addr;
    let running = std::thread::spawn(move || get(addr, "q.test", "/slow"));
    std::thread::sleep(Duration::from_millis(200));
    replace(&dir.join("policies/q.toml"), &file_of(3000));
    assert!(server.registry.reload().problems.is_empty());
    // The one slot is still taken by the request that started before.
    let refused = server.get("q.test", "/slow");
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(refused.header("retry-after").is_some(), "{refused:?}");
    assert!(running.join().unwrap().is_ok_with("done\n"));
    assert!(server.get("q.test", "/slow").is_ok_with("done\n"));
    server.assert_metrics(&[
        r#"moonwall_requests_total{tenant="q",status="503",outcome="queue-full"} 1"#,
    ]);
}

// ---------------------------------------------------------------------------
// 4. Hot reload through the real binary (the reload loop polls)
// ---------------------------------------------------------------------------

#[test]
fn the_binary_picks_up_script_and_policy_changes_by_polling() {
    let _serial = serial();
    let app_policy = |timeout: u64, hosts: &[&str]| {
        policy(
            "app",
            hosts,
            &format!("timeout_ms = {timeout}\n{PLENTY_OF_FUEL}"),
            "",
        )
    };
    let dir = layout(
        "binary-reload",
        "reload_poll_ms = 200",
        &[
            ("policies/app.toml", &app_policy(1000, &["app.test"])),
            ("roots/app/page.lua", "ngx.say('old page')"),
            ("roots/app/slow.lua", &busy(300)),
            ("roots/extra/index.lua", "ngx.say('extra tenant')"),
        ],
    );
    let server = Binary::start(&dir.join("moonwall.toml"), &[]);
    let policy_file = dir.join("policies/app.toml");
    let script = dir.join("roots/app/page.lua");

    // (a) A script edited under load.
    let load = Load::start(server.addr, "app.test", "/page", 4);
    std::thread::sleep(Duration::from_millis(500));
    replace(&script, "ngx.say('new page')");
    std::thread::sleep(Duration::from_millis(800));
    assert_switched(&load.finish(), "old page\n", "new page\n");

    // (b) A syntax error: the previous version keeps serving.
    replace(&script, "ngx.say('broken page'");
    let load = Load::start(server.addr, "app.test", "/page", 2);
    std::thread::sleep(Duration::from_millis(300));
    assert_all_served(&load.finish(), &["new page\n"]);
    assert!(
        server.wait_log(
            "keeping the previous version of page.lua serving",
            Duration::from_secs(5)
        ),
        "{}",
        server.log()
    );

    // (c) A policy edited under load: new hosts and a new timeout.
    assert!(server.get("app.test", "/slow").is_ok_with("done\n"));
    assert_eq!(server.get("app2.test", "/page").status, 404);
    let load = Load::start(server.addr, "app.test", "/page", 4);
    std::thread::sleep(Duration::from_millis(300));
    replace(&policy_file, &app_policy(100, &["app.test", "app2.test"]));
    let picked_up = eventually(Duration::from_secs(10), || {
        server.get("app2.test", "/page").is_ok_with("new page\n")
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_all_served(&load.finish(), &["new page\n"]);
    assert!(
        picked_up,
        "the policy change was not picked up:\n{}",
        server.log()
    );
    assert_eq!(server.get("app.test", "/slow").status, 503);

    // (d) A broken policy: the previous version keeps serving, the log says
    // where the problem is; fixed, it takes effect.
    let broken = "tenant = \"app\"\nhosts = [\"app.test\", \"app3.test\"]\nroot = \"../roots/app\"\n\n[limits]\nfuel = 100000000000\ntimeout_ms = 1000\nunknown_key = 1\n";
    let load = Load::start(server.addr, "app.test", "/page", 2);
    replace(&policy_file, broken);
    let place = format!("{}:8:1", policy_file.display());
    let logged = server.wait_log(&place, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    assert_all_served(&load.finish(), &["new page\n"]);
    assert!(logged, "no {place} in the log:\n{}", server.log());
    assert!(server.log().contains("unknown_key"), "{}", server.log());
    // Refused once, not again at every poll while it stays broken.
    std::thread::sleep(Duration::from_millis(700));
    let complaints = server.log().matches(&place).count();
    assert_eq!(complaints, 1, "{}", server.log());
    assert!(server.get("app2.test", "/page").is_ok_with("new page\n"));
    assert_eq!(server.get("app3.test", "/page").status, 404);
    assert_eq!(server.get("app.test", "/slow").status, 503);
    replace(&policy_file, &broken.replace("unknown_key = 1\n", ""));
    assert!(
        eventually(Duration::from_secs(10), || server
            .get("app3.test", "/page")
            .is_ok_with("new page\n")),
        "the fixed policy was not picked up:\n{}",
        server.log()
    );
    assert_eq!(server.get("app2.test", "/page").status, 404);
    assert!(server.get("app.test", "/slow").is_ok_with("done\n"));

    // (e) A policy file added is a new tenant; removed, its hosts are gone.
    replace(
        &dir.join("policies/extra.toml"),
        &policy("extra", &["extra.test"], "", ""),
    );
    assert!(
        eventually(Duration::from_secs(10), || server
            .get("extra.test", "/")
            .is_ok_with("extra tenant\n")),
        "the new tenant was not picked up:\n{}",
        server.log()
    );
    std::fs::remove_file(dir.join("policies/extra.toml")).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || server
            .get("extra.test", "/")
            .status
            == 404),
        "the removed tenant still serves:\n{}",
        server.log()
    );
    assert!(server.get("app.test", "/page").is_ok_with("new page\n"));
}

// ---------------------------------------------------------------------------
// 4b. Init scripts (init_by_lua): the state every request starts from
// ---------------------------------------------------------------------------

/// A policy with an init script (inside the tenant's root) and a lib dir.
fn policy_with_init(name: &str, host: &str, limits: &str) -> String {
    format!(
        "init_script = \"init.lua\"\n{}",
        policy(name, &[host], limits, "lib_dirs = [\"../lib\"]")
    )
}

const INIT: &str = r#"
counter = 0
local greet = require("greet")
config = { greeting = greet.hello("init"), phase = ngx.get_phase() }
local ok, err = pcall(ngx.sleep, 0.01)
config.sleep = tostring(ok) .. ": " .. tostring(err):match("API disabled[^\n]*")
config.say = tostring((pcall(ngx.say, "x")))
"#;

/// Each request changes what it finds; none sees another's changes.
const SHOW: &str = r#"
counter = counter + 1
local greet = require("greet")
greet.extra = (greet.extra or 0) + 1
ngx.say(config.greeting, "|", config.phase, "|", counter, "|", loads, "|", greet.extra,
        "|", config.sleep, "|", config.say, "|", ngx.get_phase())
"#;

#[test]
fn an_init_script_prepares_the_state_every_request_starts_from() {
    let _serial = serial();
    let dir = layout(
        "init",
        "",
        &[
            ("policies/i.toml", &policy_with_init("i", "i.test", "")),
            ("roots/i/init.lua", INIT),
            ("roots/i/show.lua", SHOW),
            (
                "roots/i/parent.lua",
                "counter = 10 local r = ngx.location.capture('/show') ngx.print(r.body)",
            ),
            ("policies/j.toml", &policy("j", &["j.test"], "", "")),
            (
                "roots/j/show.lua",
                "ngx.say(tostring(config), ' ', tostring(counter))",
            ),
            (
                "lib/greet.lua",
                "loads = (loads or 0) + 1\nreturn { hello = function(who) return 'hello ' .. who end }\n",
            ),
        ],
    );
    let server = Server::start(&dir.join("moonwall.toml"));
    // The module was loaded once, by the init script; each request starts
    // from the same state, whatever the requests before it changed.
    let expected =
        "hello init|init|1|1|1|false: API disabled in the context of init_by_lua*|false|content\n";
    for _ in 0..3 {
        let reply = server.get("i.test", "/show");
        assert!(reply.is_ok_with(expected), "{reply:?}");
    }
    let log = logged();
    assert!(log.contains("init script ran"), "{log}");
    // A subrequest starts from the tenant's state too (not its parent's).
    let reply = server.get("i.test", "/parent");
    assert!(reply.is_ok_with(expected), "{reply:?}");
    // Another tenant's requests start from the sandbox's own state.
    assert!(server.get("j.test", "/show").is_ok_with("nil nil\n"));

    // An edited init script runs again at the next reload, and requests
    // start from its new state.
    replace(
        &dir.join("roots/i/init.lua"),
        &INIT.replace("greet.hello(\"init\")", "greet.hello(\"v2\")"),
    );
    assert!(server.registry.changed());
    let report = server.registry.reload();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let reply = server.get("i.test", "/show");
    assert!(reply.body.starts_with("hello v2|init|1|1|1|"), "{reply:?}");

    // One that fails keeps the previous state serving, and says where.
    replace(
        &dir.join("roots/i/init.lua"),
        "local x = 1\nerror('no database')\n",
    );
    let report = server.registry.reload();
    assert_eq!(report.kept, ["i"], "{:?}", report.problems);
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("init script: init.lua:2: no database")),
        "{:?}",
        report.problems
    );
    assert!(server.get("i.test", "/show").body.starts_with("hello v2|"));
    // Refused once, not again at every poll until it changes.
    assert!(!server.registry.changed());
}

#[test]
fn an_init_script_is_held_to_the_tenants_limits() {
    let _serial = serial();
    let dir = layout(
        "init-limits",
        "",
        &[
            (
                "policies/i.toml",
                &policy_with_init("i", "i.test", "fuel = 5000000"),
            ),
            ("roots/i/init.lua", "while true do end"),
            ("lib/.keep", ""),
        ],
    );
    let mut config =
        ServerConfig::load(&dir.join("moonwall.toml")).unwrap_or_else(|e| panic!("{e}"));
    config.sandbox = Some(sandbox());
    let error = match Registry::load(config, Metrics::new()) {
        Ok(_) => panic!("a runaway init script was accepted"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("init script init.lua: ") && error.contains("fuel"),
        "{error}"
    );
    // A syntax error, with its line.
    std::fs::write(dir.join("roots/i/init.lua"), "x = 1\nlocal = 2\n").unwrap();
    let mut config =
        ServerConfig::load(&dir.join("moonwall.toml")).unwrap_or_else(|e| panic!("{e}"));
    config.sandbox = Some(sandbox());
    let error = match Registry::load(config, Metrics::new()) {
        Ok(_) => panic!("an init script with a syntax error was accepted"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("init script: init.lua:2:"), "{error}");
    // A policy naming a script that is not there says where.
    std::fs::remove_file(dir.join("roots/i/init.lua")).unwrap();
    let error = ServerConfig::load(&dir.join("moonwall.toml"))
        .map(|config| Registry::load(config, Metrics::new()).err())
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("a missing init script is refused")
        .to_string();
    assert!(
        error.contains("i.toml:1:15: script") && error.contains("init.lua not found"),
        "{error}"
    );
}

// ---------------------------------------------------------------------------
// 5. A noisy neighbour
// ---------------------------------------------------------------------------

#[test]
fn a_tenant_flooding_its_share_does_not_hurt_another() {
    let _serial = serial();
    let dir = layout(
        "noisy",
        "",
        &[
            (
                "policies/a.toml",
                &policy(
                    "a",
                    &["a.test"],
                    &format!("max_concurrency = 2\ntimeout_ms = 1000\n{PLENTY_OF_FUEL}"),
                    "",
                ),
            ),
            (
                "policies/b.toml",
                &policy("b", &["b.test"], "max_concurrency = 4", ""),
            ),
            ("roots/a/loop.lua", "while true do end"),
            ("roots/b/hello.lua", "ngx.say('hello')"),
        ],
    );
    let server = Server::start(&dir.join("moonwall.toml"));
    let flood = Load::start(server.addr, "a.test", "/loop", 16);
    std::thread::sleep(Duration::from_millis(200));
    let quiet = Load::start(server.addr, "b.test", "/hello", 4);
    std::thread::sleep(Duration::from_secs(3));
    let served = assert_all_served(&quiet.finish(), &["hello\n"]);
    let flooded = flood.finish();
    assert!(served >= 100, "b was served only {served} requests in 3 s");
    // Every flood request was stopped: by its time limit or by admission.
    for reply in flooded.iter().flatten() {
        assert_eq!(reply.status, 503, "{reply:?}");
    }
    let text = server.metrics();
    assert!(
        text.contains(r#"moonwall_limit_hits_total{tenant="a",kind="time"}"#),
        "{text}"
    );
}

// ---------------------------------------------------------------------------
// 6. Metrics
// ---------------------------------------------------------------------------

#[test]
fn metrics_count_requests_limits_rate_limiting_and_reloads_per_tenant() {
    let _serial = serial();
    let dir = layout(
        "metrics",
        "",
        &[
            (
                "policies/a.toml",
                &policy(
                    "a",
                    &["a.test"],
                    &format!("timeout_ms = 100\n{PLENTY_OF_FUEL}"),
                    "",
                ),
            ),
            (
                "policies/r.toml",
                &policy("r", &["r.test"], "requests_per_second = 1\nburst = 1", ""),
            ),
            ("roots/a/ok.lua", "ngx.say('ok')"),
            ("roots/a/loop.lua", "while true do end"),
            ("roots/r/ok.lua", "ngx.say('ok')"),
        ],
    );
    let server = Server::start(&dir.join("moonwall.toml"));
    for _ in 0..3 {
        assert!(server.get("a.test", "/ok").is_ok_with("ok\n"));
    }
    assert_eq!(server.get("a.test", "/loop").status, 503);
    assert_eq!(server.get("a.test", "/missing").status, 404);
    assert!(server.get("r.test", "/ok").is_ok_with("ok\n"));
    assert_eq!(server.get("r.test", "/ok").status, 429);
    assert_eq!(server.get("nobody.test", "/ok").status, 404);

    replace(
        &dir.join("policies/a.toml"),
        &policy(
            "a",
            &["a.test"],
            &format!("timeout_ms = 150\n{PLENTY_OF_FUEL}"),
            "",
        ),
    );
    assert!(server.registry.reload().problems.is_empty());
    replace(
        &dir.join("policies/r.toml"),
        &policy("r", &["r.test"], "no_such_limit = 1", ""),
    );
    assert_eq!(server.registry.reload().kept, ["r"]);

    let text = server.assert_metrics(&[
        r#"moonwall_requests_total{tenant="a",status="200",outcome="ok"} 3"#,
        r#"moonwall_requests_total{tenant="a",status="503",outcome="limit-time"} 1"#,
        r#"moonwall_requests_total{tenant="a",status="404",outcome="not-found"} 1"#,
        r#"moonwall_limit_hits_total{tenant="a",kind="time"} 1"#,
        r#"moonwall_requests_total{tenant="r",status="200",outcome="ok"} 1"#,
        r#"moonwall_requests_total{tenant="r",status="429",outcome="rate-limited"} 1"#,
        r#"moonwall_request_duration_seconds_count{tenant="a"} 5"#,
        r#"moonwall_running{tenant="a"} 0"#,
        r#"moonwall_queue_depth{tenant="a"} 0"#,
        r#"moonwall_reloads_total{tenant="a",result="ok"} 1"#,
        r#"moonwall_reloads_total{tenant="a",result="failed"} 0"#,
        r#"moonwall_reloads_total{tenant="r",result="ok"} 0"#,
        r#"moonwall_reloads_total{tenant="r",result="failed"} 1"#,
    ]);
    let fuel: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix(r#"moonwall_fuel_used_total{tenant="a"} "#))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no fuel series for a:\n{text}"));
    assert!(fuel > 0, "{text}");
    // Requests for no tenant are not anyone's.
    assert!(!text.contains("nobody"), "{text}");
    let scrape = get(server.metrics_addr, "localhost", "/metrics");
    assert_eq!(
        scrape.header("content-type"),
        Some("text/plain; version=0.0.4")
    );
}

// ---------------------------------------------------------------------------
// 7 and 8. The log of the binary
// ---------------------------------------------------------------------------

#[test]
fn access_log_lines_name_the_tenant() {
    let _serial = serial();
    let dir = layout(
        "access-log",
        "",
        &[
            (
                "policies/alpha.toml",
                &policy("alpha", &["alpha.test"], "", ""),
            ),
            ("roots/alpha/index.lua", "ngx.say('alpha')"),
        ],
    );
    let server = Binary::start(&dir.join("moonwall.toml"), &["--log-format", "json"]);
    assert!(server.get("alpha.test", "/").is_ok_with("alpha\n"));
    assert_eq!(server.get("nobody.test", "/").status, 404);
    let access = |tenant: &str| {
        let mut found = None;
        eventually(Duration::from_secs(5), || {
            found = server
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| {
                    l.contains("\"target\":\"access\"")
                        && l.contains(&format!("\"tenant\":\"{tenant}\""))
                })
                .cloned();
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("no access line of {tenant}:\n{}", server.log()))
    };
    let line = access("alpha");
    assert!(line.contains("\"status\":200"), "{line}");
    assert!(line.contains("\"outcome\":\"ok\""), "{line}");
    let line = access("-");
    assert!(line.contains("\"status\":404"), "{line}");
    assert!(line.contains("\"outcome\":\"unknown-host\""), "{line}");
}

#[test]
fn a_tenants_log_level_filters_its_script_log_lines() {
    let _serial = serial();
    let script = "ngx.log(ngx.INFO, NAME .. '-hidden-marker') ngx.log(ngx.ERR, NAME .. '-shown-marker') ngx.say('logged')";
    let dir = layout(
        "log-level",
        "",
        &[
            (
                "policies/quiet.toml",
                &policy("quiet", &["quiet.test"], "", "log_level = \"warn\""),
            ),
            (
                "policies/chatty.toml",
                &policy("chatty", &["chatty.test"], "", "log_level = \"info\""),
            ),
            ("roots/quiet/index.lua", &script.replace("NAME", "'quiet'")),
            (
                "roots/chatty/index.lua",
                &script.replace("NAME", "'chatty'"),
            ),
        ],
    );
    let server = Binary::start(&dir.join("moonwall.toml"), &[]);
    assert!(server.get("quiet.test", "/").is_ok_with("logged\n"));
    assert!(server.get("chatty.test", "/").is_ok_with("logged\n"));
    assert!(
        server.wait_log("quiet-shown-marker", Duration::from_secs(5)),
        "{}",
        server.log()
    );
    // The other tenant's INFO line shows that INFO lines do reach the log...
    assert!(
        server.wait_log("chatty-hidden-marker", Duration::from_secs(5)),
        "{}",
        server.log()
    );
    // ...and wait for quiet's access line, the last of its request.
    assert!(server.wait_log("quiet GET / 200", Duration::from_secs(5)));
    let log = server.log();
    assert!(!log.contains("quiet-hidden-marker"), "{log}");
}

#[test]
fn guest_text_reaches_the_log_escaped_filtered_and_within_budget() {
    let _serial = serial();
    // Lua output, warnings and errors are guest text like ngx.log's: a
    // CR/LF in them must not start a log line of the script's making, the
    // tenant's log_level filters them, and a request's log has a budget.
    let forge = "\\r\\n127.0.0.1 GET /forged-by-TENANT 200";
    let script = format!(
        "io.write(NAME .. '-write-marker{forge}') \
         print(NAME .. '-print-marker') \
         if FLOOD then for i = 1, 1000 do io.write(('flood-line '):rep(90), '\\n') end end \
         error(NAME .. '-error{forge}')"
    );
    let dir = layout(
        "log-guest-text",
        "",
        &[
            (
                "policies/quiet.toml",
                &policy("quiet", &["quiet.test"], "", "log_level = \"warn\""),
            ),
            (
                "policies/chatty.toml",
                &policy("chatty", &["chatty.test"], "", "log_level = \"info\""),
            ),
            (
                "roots/quiet/index.lua",
                &(script.replace("NAME", "'quiet'").replace("TENANT", "quiet"))
                    .replace("FLOOD", "false"),
            ),
            (
                "roots/chatty/index.lua",
                &(script
                    .replace("NAME", "'chatty'")
                    .replace("TENANT", "chatty"))
                .replace("FLOOD", "true"),
            ),
        ],
    );
    let server = Binary::start(&dir.join("moonwall.toml"), &[]);
    assert_eq!(server.get("quiet.test", "/").status, 500);
    assert_eq!(server.get("chatty.test", "/").status, 500);
    for tenant in ["quiet", "chatty"] {
        assert!(
            server.wait_log(&format!("{tenant} GET / 500"), Duration::from_secs(10)),
            "{}",
            server.log()
        );
    }
    let log = server.log();
    // No line of the log starts where a script put a line break...
    assert!(
        !log.lines()
            .any(|line| line.starts_with("127.0.0.1 GET /forged")),
        "{log}"
    );
    // ...the text is there, escaped, below the tenant's log level only...
    assert!(
        log.contains("chatty-write-marker\\r\\n127.0.0.1 GET /forged-by-chatty 200"),
        "{log}"
    );
    assert!(log.contains("chatty-print-marker"), "{log}");
    assert!(!log.contains("quiet-write-marker"), "{log}");
    assert!(!log.contains("quiet-print-marker"), "{log}");
    // ...a script's error is always logged, escaped, whatever its level...
    for tenant in ["quiet", "chatty"] {
        let error = format!("{tenant}-error\\r\\n127.0.0.1 GET /forged-by-{tenant} 200");
        assert!(log.contains(&error), "{log}");
    }
    // ...and a flood of output stops at the request's log budget (64 KiB).
    assert!(log.contains("log limit of 65536 bytes reached"), "{log}");
    let flooded = log.matches("flood-line").count() * "flood-line ".len();
    assert!(
        (64 * 1024..2 * 64 * 1024).contains(&flooded),
        "{flooded} bytes of flood in the log"
    );
}

#[test]
fn a_full_instance_pool_makes_runs_wait_instead_of_failing() {
    let _serial = serial();
    // --max-in-flight 2 --max-running 1: a pool of 11 instances. One request
    // of `fan` runs 20 sleeping subrequests at once, far more than the pool
    // holds; they and another tenant's requests wait for instances, and
    // every one of them is served.
    let dir = layout(
        "instance-pool",
        "",
        &[
            (
                "policies/fan.toml",
                &policy(
                    "fan",
                    &["fan.test"],
                    "timeout_ms = 60000\nmax_in_flight = 40",
                    "",
                ),
            ),
            (
                "policies/other.toml",
                &policy("other", &["other.test"], "timeout_ms = 60000", ""),
            ),
            (
                "roots/fan/index.lua",
                "local list = {} for i = 1, 20 do list[i] = { '/slow.lua' } end \
                 local replies = { ngx.location.capture_multi(list) } \
                 for _, r in ipairs(replies) do ngx.print(r.status, ' ') end ngx.say()",
            ),
            ("roots/fan/slow.lua", "ngx.sleep(0.3) ngx.say('slept')"),
            ("roots/other/index.lua", "ngx.say('other')"),
        ],
    );
    let server = Binary::start(
        &dir.join("moonwall.toml"),
        &["--max-in-flight", "2", "--max-running", "1"],
    );
    let addr = server.addr;
    let fan = std::thread::spawn(move || get(addr, "fan.test", "/"));
    let mut others = Vec::new();
    while !fan.is_finished() {
        others.push(server.get("other.test", "/"));
    }
    let fan = fan.join().unwrap();
    assert_eq!(fan.status, 200, "{fan:?}\n{}", server.log());
    assert_eq!(
        fan.body,
        format!("{}\n", "200 ".repeat(20)),
        "{}",
        server.log()
    );
    for other in others {
        assert!(other.is_ok_with("other\n"), "{other:?}\n{}", server.log());
    }
}

#[test]
fn sighup_reloads_the_policies_at_once() {
    let _serial = serial();
    // No polling: only SIGHUP reloads.
    let dir = layout(
        "binary-sighup",
        "reload_poll_ms = 0",
        &[
            ("policies/app.toml", &policy("app", &["app.test"], "", "")),
            ("roots/app/page.lua", "ngx.say('page')"),
        ],
    );
    let server = Binary::start(&dir.join("moonwall.toml"), &[]);
    assert_eq!(server.get("app2.test", "/page").status, 404);
    replace(
        &dir.join("policies/app.toml"),
        &policy("app", &["app.test", "app2.test"], "", ""),
    );
    // Without a signal nothing changes, however long one waits.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(server.get("app2.test", "/page").status, 404);
    let sent = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    assert!(
        eventually(Duration::from_secs(10), || {
            server.get("app2.test", "/page").is_ok_with("page\n")
        }),
        "SIGHUP did not reload:\n{}",
        server.log()
    );
}

/// A tenant's scripts are opened beneath its allowed root each time they
/// are read, not by the path checked when the policy loaded: a directory
/// swapped for a link to outside the allowed roots (a location's script, an
/// init script's) is refused and never runs, while a link inside the root
/// swapped to a new version (an atomic deploy) is followed. Before, the
/// path was opened again as it stood, and the outside script ran.
#[test]
fn swapping_a_tenants_script_directory_for_a_link_never_runs_code_from_outside() {
    let _serial = serial();
    let mut policy = format!(
        "init_script = \"boot/init.lua\"\n{}",
        policy("c", &["c.test"], "", "")
    );
    policy.push_str(concat!(
        "\n[[location]]\npath = \"/app\"\ncontent = \"app/content.lua\"\n",
        "\n[[location]]\npath = \"/deploy\"\ncontent = \"current/content.lua\"\n",
        "\n[[location]]\npath = \"/who\"\ncontent = \"who.lua\"\n",
    ));
    let dir = layout(
        "confined-scripts",
        "allowed_roots = [\"roots\"]",
        &[
            ("policies/c.toml", &policy),
            ("roots/c/boot/init.lua", "who = 'inside'"),
            ("roots/c/who.lua", "ngx.say(who)"),
            ("roots/c/app/content.lua", "ngx.say('inside')"),
            ("roots/c/v1/content.lua", "ngx.say('v1')"),
            ("roots/c/v2/content.lua", "ngx.say('v2')"),
            ("outside/boot/init.lua", "who = 'outside'"),
            ("outside/app/content.lua", "ngx.say('outside')"),
        ],
    );
    let root = dir.join("roots/c");
    std::os::unix::fs::symlink("v1", root.join("current")).unwrap();
    let server = Server::start(&dir.join("moonwall.toml"));
    assert!(server.get("c.test", "/app").is_ok_with("inside\n"));
    assert!(server.get("c.test", "/deploy").is_ok_with("v1\n"));
    assert!(server.get("c.test", "/who").is_ok_with("inside\n"));

    // An atomic deploy inside the root: the link now names v2.
    std::os::unix::fs::symlink("v2", root.join(".current.tmp")).unwrap();
    std::fs::rename(root.join(".current.tmp"), root.join("current")).unwrap();
    assert!(server.get("c.test", "/deploy").is_ok_with("v2\n"));

    // The location's directory swapped for a link to outside the roots.
    std::fs::rename(root.join("app"), root.join("app.old")).unwrap();
    std::os::unix::fs::symlink(dir.join("outside/app"), root.join("app")).unwrap();
    let reply = server.get("c.test", "/app");
    assert_eq!(reply.status, 500, "{reply:?}");
    assert!(!reply.body.contains("outside"), "{reply:?}");
    assert!(logged().contains("cannot read"), "nothing logged");

    // The init script's directory, likewise: the reload is refused (the
    // policy's check sees it first; `ScriptFile`'s unit tests cover the
    // open itself) and the state the init script left before keeps serving.
    std::fs::rename(root.join("boot"), root.join("boot.old")).unwrap();
    std::os::unix::fs::symlink(dir.join("outside/boot"), root.join("boot")).unwrap();
    let report = server.registry.reload();
    assert_eq!(report.kept, ["c"], "{:?}", report.problems);
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("outside the allowed roots")
                || p.contains("cannot read init script")),
        "{:?}",
        report.problems
    );
    assert!(server.get("c.test", "/who").is_ok_with("inside\n"));
}
