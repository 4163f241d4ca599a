//! `moonwall serve` end to end: a real server on an ephemeral port, real
//! sockets. Raw TCP where the test must control the bytes on the wire.

use crate::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use moonwall::http::config::SiteConfig;
use moonwall::http::routing::{DocRoot, Router};
use moonwall::http::server::{App, Server, ServerSettings, ServerThread};
use moonwall::{EngineSettings, Limits, Sandbox};

struct TestServer {
    addr: SocketAddr,
    metrics: Arc<moonwall::tenants::metrics::Metrics>,
    server: ServerThread,
}

impl TestServer {
    fn start(router: Router, limits: Limits, settings: ServerSettings) -> Self {
        let sandbox = Arc::new(
            Sandbox::new(EngineSettings {
                max_instances: 32,
                cache_dir: Some(common::cache_dir()),
                ..EngineSettings::default()
            })
            .unwrap(),
        );
        let app = App::new(sandbox, router, limits, settings);
        let metrics = app.registry.metrics.clone();
        let server = Server::spawn(app, &[([127, 0, 0, 1], 0).into()], None, 2).unwrap();
        TestServer {
            addr: server.addr(),
            metrics,
            server,
        }
    }

    /// Begin a graceful shutdown; returns once the server has stopped.
    fn stop(&mut self) {
        self.server.stop().unwrap();
    }
}

fn limits() -> Limits {
    Limits {
        timeout: Duration::from_millis(2000),
        ..common::test_limits()
    }
}

/// A site directory under target/, fresh for each test.
fn site(name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("sites")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    for (path, contents) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }
    dir
}

/// Send raw bytes, read until the server closes; the response text.
fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let response = raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    (status_of(&response), response)
}

fn status_of(response: &str) -> u16 {
    response
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// The body of a response, with chunked transfer encoding undone.
fn body_of(response: &str) -> String {
    let Some((head, body)) = response.split_once("\r\n\r\n") else {
        return String::new();
    };
    if !head.to_lowercase().contains("transfer-encoding: chunked") {
        return body.to_string();
    }
    let mut rest = body;
    let mut decoded = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        decoded.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    decoded
}

fn docroot(dir: &Path) -> Router {
    Router::DocRoot(DocRoot::new(dir, true).unwrap())
}

#[test]
fn a_document_root_serves_scripts_index_files_and_static_files() {
    let dir = site(
        "docroot",
        &[
            ("index.lua", "ngx.say('index of ', ngx.var.uri)"),
            (
                "hello.lua",
                "ngx.header.content_type = 'text/plain' ngx.say('hello ', ngx.var.arg_name)",
            ),
            ("a/b.lua", "ngx.say('a/b')"),
            ("a/index.lua", "ngx.say('a index')"),
            ("style.css", "body { color: red }"),
            ("logo.png", "\u{89}PNG"),
        ],
    );
    let server = TestServer::start(docroot(&dir), limits(), ServerSettings::default());
    let cases = [
        ("/", 200, "index of /\n"),
        ("/hello?name=you", 200, "hello you\n"),
        ("/hello.lua?name=me", 200, "hello me\n"),
        ("/a/b", 200, "a/b\n"),
        ("/a/b.lua", 200, "a/b\n"),
        ("/a/", 200, "a index\n"),
        ("/a", 200, "a index\n"),
        ("/style.css", 200, "body { color: red }"),
    ];
    for (path, status, body) in cases {
        let (got, response) = get(server.addr, path);
        assert_eq!(
            (got, body_of(&response).as_str()),
            (status, body),
            "{path}: {response}"
        );
    }
    let (_, css) = get(server.addr, "/style.css");
    assert!(
        css.to_lowercase().contains("content-type: text/css"),
        "{css}"
    );
    let (_, png) = get(server.addr, "/logo.png");
    assert!(
        png.to_lowercase().contains("content-type: image/png"),
        "{png}"
    );
    assert_eq!(get(server.addr, "/missing").0, 404);
    assert_eq!(get(server.addr, "/a/missing.lua").0, 404);

    let no_static = TestServer::start(
        Router::DocRoot(DocRoot::new(&dir, false).unwrap()),
        limits(),
        ServerSettings::default(),
    );
    assert_eq!(get(no_static.addr, "/style.css").0, 404);
    assert_eq!(get(no_static.addr, "/hello?name=x").0, 200);
}

#[test]
fn nothing_outside_the_root_is_ever_reachable() {
    let outside = site(
        "outside",
        &[
            ("secret.txt", "TOP-SECRET"),
            ("secret.lua", "ngx.say('TOP-SECRET')"),
        ],
    );
    let dir = site(
        "confined",
        &[
            ("index.lua", "ngx.say('ok')"),
            (".env", "TOP-SECRET"),
            (".git/config", "TOP-SECRET"),
        ],
    );
    std::os::unix::fs::symlink(outside.join("secret.txt"), dir.join("link.txt")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.lua"), dir.join("link.lua")).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("linkdir")).unwrap();
    let server = TestServer::start(docroot(&dir), limits(), ServerSettings::default());
    for path in [
        "/../outside/secret.txt",
        "/%2e%2e/outside/secret.txt",
        "/%2E%2E%2Foutside%2Fsecret.txt",
        "/a/../../outside/secret.lua",
        "/..%2f..%2foutside/secret.lua",
        "/link.txt",
        "/link.lua",
        "/link",
        "/linkdir/secret.txt",
        "/linkdir/secret",
        "/.env",
        "/.git/config",
        "/index.lua%00.txt",
        "/%00",
    ] {
        let (status, response) = get(server.addr, path);
        assert!(status == 404 || status == 400, "{path}: {status}");
        assert!(
            !response.contains("TOP-SECRET"),
            "{path} leaked: {response}"
        );
    }
    assert_eq!(get(server.addr, "/").0, 200);
}

#[test]
fn configured_locations_run_every_phase_in_order() {
    let dir = site(
        "locations",
        &[
            ("rewrite.lua", "ngx.ctx.trail = 'rewrite'"),
            (
                "access.lua",
                "ngx.ctx.trail = ngx.ctx.trail .. ',access' if ngx.var.arg_deny then ngx.exit(403) end",
            ),
            (
                "content.lua",
                "ngx.ctx.trail = ngx.ctx.trail .. ',content' ngx.say(ngx.ctx.trail, ' ', ngx.get_phase())",
            ),
            (
                "header.lua",
                "ngx.header['X-Trail'] = ngx.ctx.trail .. ',header_filter'",
            ),
            (
                "body.lua",
                "if ngx.arg[1] then ngx.arg[1] = ngx.arg[1]:upper() end",
            ),
            ("log.lua", "ngx.log(ngx.INFO, 'logged ', ngx.ctx.trail)"),
            ("exact.lua", "ngx.say('exact')"),
            ("api.lua", "ngx.say('api prefix')"),
        ],
    );
    let config = dir.join("site.toml");
    std::fs::write(
        &config,
        r#"
[[location]]
path = "/"
rewrite = "rewrite.lua"
access = "access.lua"
content = "content.lua"
header_filter = "header.lua"
body_filter = "body.lua"
log = "log.lua"

[[location]]
path = "/api/"
content = "api.lua"

[[location]]
path = "/api/health"
match = "exact"
content = "exact.lua"
"#,
    )
    .unwrap();
    let site = SiteConfig::load(&config).unwrap();
    let server = TestServer::start(
        Router::Locations(site.locations),
        limits(),
        ServerSettings::default(),
    );
    let (status, response) = get(server.addr, "/anything");
    assert_eq!(status, 200, "{response}");
    assert_eq!(body_of(&response), "REWRITE,ACCESS,CONTENT CONTENT\n");
    assert!(
        response
            .to_lowercase()
            .contains("x-trail: rewrite,access,content,header_filter"),
        "{response}"
    );
    assert_eq!(get(server.addr, "/anything?deny=1").0, 403);
    assert_eq!(body_of(&get(server.addr, "/api/health").1), "exact\n");
    assert_eq!(body_of(&get(server.addr, "/api/healthz").1), "api prefix\n");
    assert_eq!(body_of(&get(server.addr, "/api/").1), "api prefix\n");
}

#[test]
fn oversized_heads_and_bodies_are_refused() {
    let dir = site(
        "sizes",
        &[(
            "echo.lua",
            "ngx.req.read_body() ngx.say(#(ngx.req.get_body_data() or ''))",
        )],
    );
    let settings = ServerSettings {
        max_request_body_bytes: 1000,
        max_header_bytes: 8192,
        max_headers: 20,
        ..ServerSettings::default()
    };
    let server = TestServer::start(docroot(&dir), limits(), settings);
    let post = |body: &str| {
        raw(
            server.addr,
            format!("POST /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                .as_bytes(),
        )
    };
    let ok = post(&"x".repeat(1000));
    assert_eq!(
        (status_of(&ok), body_of(&ok).as_str()),
        (200, "1000\n"),
        "{ok}"
    );
    assert_eq!(status_of(&post(&"x".repeat(1001))), 413);
    let chunked = raw(
        server.addr,
        format!(
            "POST /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{}\r\n0\r\n\r\n",
            2000,
            "y".repeat(2000)
        )
        .as_bytes(),
    );
    assert_eq!(status_of(&chunked), 413, "{chunked}");

    let huge_header = raw(
        server.addr,
        format!(
            "GET /echo HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(20_000)
        )
        .as_bytes(),
    );
    assert_eq!(status_of(&huge_header), 431, "{huge_header}");
    let many: String = (0..50).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many_headers = raw(
        server.addr,
        format!("GET /echo HTTP/1.1\r\nHost: t\r\n{many}Connection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(status_of(&many_headers), 431, "{many_headers}");
    assert_eq!(get(server.addr, "/echo").0, 200);
}

#[test]
fn a_slow_client_is_cut_off_and_others_are_served() {
    let dir = site("slowloris", &[("index.lua", "ngx.say('fast')")]);
    let settings = ServerSettings {
        header_read_timeout: Duration::from_millis(300),
        ..ServerSettings::default()
    };
    let server = TestServer::start(docroot(&dir), limits(), settings);
    let mut slow = TcpStream::connect(server.addr).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Meanwhile other clients are served.
    assert_eq!(body_of(&get(server.addr, "/").1), "fast\n");
    let mut rest = Vec::new();
    let started = std::time::Instant::now();
    let _ = slow.read_to_end(&mut rest);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the slow connection was not closed"
    );
    let text = String::from_utf8_lossy(&rest);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
}

#[test]
fn keep_alive_and_http2_without_tls() {
    let dir = site(
        "protocols",
        &[("index.lua", "ngx.say(ngx.req.http_version())")],
    );
    let server = TestServer::start(docroot(&dir), limits(), ServerSettings::default());
    let two = raw(
        server.addr,
        b"GET / HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(two.matches("HTTP/1.1 200 OK").count(), 2, "{two}");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, body) = runtime.block_on(async {
        use http_body_util::BodyExt;
        let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        let request = hyper::Request::builder()
            .uri(format!("http://{}/", server.addr))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    });
    assert_eq!((status, body.as_str()), (200, "2\n"));
}

#[test]
fn limits_and_errors_map_to_500_and_503_while_good_requests_succeed() {
    let dir = site(
        "limits",
        &[
            ("ok.lua", "ngx.say('ok')"),
            ("loop.lua", "while true do end"),
            ("bomb.lua", "local t = {} while true do t[#t + 1] = {} end"),
            (
                "flood.lua",
                "while true do ngx.print(string.rep('x', 4096)) end",
            ),
            ("error.lua", "error('secret detail')"),
            (
                "late.lua",
                "ngx.say('partial') ngx.flush() error('after the head')",
            ),
        ],
    );
    let limits = Limits {
        fuel: 50_000_000_000,
        timeout: Duration::from_millis(300),
        memory_bytes: 16 << 20,
        output_bytes: 64 << 10,
    };
    let server = Arc::new(TestServer::start(
        docroot(&dir),
        limits.clone(),
        ServerSettings::default(),
    ));
    let addr = server.addr;
    let hostile: Vec<_> = ["/loop", "/bomb", "/flood", "/error", "/loop", "/bomb"]
        .into_iter()
        .map(|path| std::thread::spawn(move || (path, get(addr, path))))
        .collect();
    let good: Vec<_> = (0..20)
        .map(|_| std::thread::spawn(move || get(addr, "/ok")))
        .collect();
    for handle in good {
        let (status, response) = handle.join().unwrap();
        assert_eq!((status, body_of(&response).as_str()), (200, "ok\n"));
    }
    for handle in hostile {
        let (path, (status, response)) = handle.join().unwrap();
        // /flood sends its head before it reaches the body limit: its 200
        // stands, and the body is cut short.
        let expected = match path {
            "/error" => 500,
            "/flood" => 200,
            _ => 503,
        };
        assert_eq!(status, expected, "{path}: {response}");
        if path == "/flood" {
            assert!(
                !response.ends_with("0\r\n\r\n"),
                "the flood must not end cleanly"
            );
            assert!(body_of(&response).len() <= 64 << 10);
        }
        assert!(
            !response.contains("secret detail"),
            "{path} leaked the error: {response}"
        );
    }
    // The fuel limit, on a server whose budget is fuel rather than time.
    let fuel_bound = Limits {
        fuel: 100_000_000,
        timeout: Duration::from_secs(10),
        ..limits
    };
    let fuel_server = Arc::new(TestServer::start(
        docroot(&dir),
        fuel_bound,
        ServerSettings::default(),
    ));
    let fuel_addr = fuel_server.addr;
    let loops: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(move || get(fuel_addr, "/loop")))
        .collect();
    let good: Vec<_> = (0..10)
        .map(|_| std::thread::spawn(move || get(fuel_addr, "/ok")))
        .collect();
    for handle in good {
        assert_eq!(handle.join().unwrap().0, 200);
    }
    for handle in loops {
        assert_eq!(handle.join().unwrap().0, 503);
    }

    // An error after the head was sent cuts the response short.
    let late = raw(
        addr,
        b"GET /late HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&late), 200);
    assert!(
        !late.ends_with("0\r\n\r\n"),
        "the cut response must not end cleanly: {late:?}"
    );
    assert_eq!(get(addr, "/ok").0, 200);
}

#[test]
fn graceful_shutdown_lets_in_flight_requests_finish() {
    let dir = site(
        "shutdown",
        &[(
            "slow.lua",
            "local t = os.clock() while os.clock() - t < 0.5 do end ngx.say('finished')",
        )],
    );
    let generous = Limits {
        fuel: 100_000_000_000,
        ..limits()
    };
    let mut server = TestServer::start(docroot(&dir), generous, ServerSettings::default());
    let addr = server.addr;
    let in_flight = std::thread::spawn(move || get(addr, "/slow"));
    std::thread::sleep(Duration::from_millis(150));
    server.stop();
    let (status, response) = in_flight.join().unwrap();
    assert_eq!((status, body_of(&response).as_str()), (200, "finished\n"));
    assert!(
        TcpStream::connect(addr).is_err(),
        "the listener is closed after shutdown"
    );
}

#[test]
fn the_example_site_works() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/site/site.toml");
    let site = SiteConfig::load(&config).unwrap();
    let server = TestServer::start(
        Router::Locations(site.locations),
        site.limits,
        ServerSettings::default(),
    );
    let addr = server.addr;

    let (status, front) = get(addr, "/");
    assert_eq!(status, 200);
    assert!(body_of(&front).contains("moonwall example site"));
    assert_eq!(
        body_of(&get(addr, "/hello?name=visitor").1),
        "hello, visitor!\n"
    );

    let (status, users) = get(addr, "/api/users");
    assert_eq!(status, 200);
    assert!(
        users
            .to_lowercase()
            .contains("content-type: application/json")
    );
    assert_eq!(
        body_of(&users),
        "{\"count\":2,\"users\":[{\"id\":1,\"languages\":[\"Lua\",\"C\"],\"name\":\"Ada\"},{\"id\":2,\"languages\":[\"COBOL\"],\"name\":\"Grace\"}]}\n"
    );
    assert_eq!(
        body_of(&get(addr, "/api/users/2").1),
        "{\"id\":2,\"languages\":[\"COBOL\"],\"name\":\"Grace\"}\n"
    );
    assert_eq!(get(addr, "/api/users/9").0, 404);

    let form = "name=Ada+L.&message=%3Cb%3Ehi%3C%2Fb%3E";
    let posted = raw(
        addr,
        format!(
            "POST /form HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            form.len()
        )
        .as_bytes(),
    );
    assert_eq!(
        body_of(&posted),
        "<p>Thanks, Ada L.. You said: &lt;b&gt;hi&lt;/b&gt;</p>\n"
    );

    let (status, redirect) = get(addr, "/redirect");
    assert_eq!(status, 302);
    assert!(
        redirect
            .to_lowercase()
            .contains("location: /hello?name=redirected"),
        "{redirect}"
    );

    let headers = raw(addr, b"GET /headers HTTP/1.1\r\nHost: t\r\nUser-Agent: tester/1\r\nCookie: visited=yes\r\nConnection: close\r\n\r\n");
    let lower = headers.to_lowercase();
    assert!(
        lower.contains("set-cookie: visited=yes; path=/; httponly")
            && lower.contains("set-cookie: theme=dark")
    );
    assert!(
        body_of(&headers).starts_with("your user agent: tester/1\ncookie 'visited': yes\n"),
        "{headers}"
    );

    let (status, refused) = get(addr, "/admin/");
    assert_eq!(status, 401);
    assert!(
        refused
            .to_lowercase()
            .contains("www-authenticate: token realm=\"admin\""),
        "{refused}"
    );
    let admitted = raw(
        addr,
        b"GET /admin/ HTTP/1.1\r\nHost: t\r\nX-Token: let-me-in\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(
        body_of(&admitted),
        "welcome, admin: the access phase let you in\n"
    );

    let (status, shout) = get(addr, "/shout?name=filters");
    assert_eq!(
        (status, body_of(&shout).as_str()),
        (200, "HELLO, FILTERS!\n")
    );
    assert!(shout.to_lowercase().contains("x-filtered: shout"));
}

#[test]
fn connections_beyond_the_cap_wait_their_turn() {
    let dir = site("connection-cap", &[("index.lua", "ngx.say('served')")]);
    let settings = ServerSettings {
        max_connections: 1,
        ..ServerSettings::default()
    };
    let server = TestServer::start(docroot(&dir), limits(), settings);
    // The first connection stays open (keep-alive) and holds the only slot.
    let mut first = TcpStream::connect(server.addr).unwrap();
    first
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut buffer = [0u8; 512];
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert!(first.read(&mut buffer).unwrap() > 0);
    // A second connection is not served while the first is open...
    let mut second = TcpStream::connect(server.addr).unwrap();
    second
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    second
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(
        second.read(&mut buffer).is_err(),
        "served beyond the connection cap"
    );
    // ...and is as soon as the first goes away.
    drop(first);
    second
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut response = Vec::new();
    let _ = second.read_to_end(&mut response);
    assert!(String::from_utf8_lossy(&response).starts_with("HTTP/1.1 200 OK"));
}

/// A client that goes away while a script streams its response: the run
/// stops on its next write, and the request is the client's doing
/// (`client-closed`), not a Lua error of the script.
#[test]
fn a_client_that_leaves_mid_response_is_not_a_script_error() {
    let dir = site(
        "client-leaves",
        &[(
            "stream.lua",
            "for i = 1, 100000 do ngx.say(string.rep('x', 1000)) ngx.flush(true) end",
        )],
    );
    // Room to write far more than the socket buffers hold, so that the run
    // meets the closed connection before any limit.
    let roomy = Limits {
        output_bytes: 1 << 30,
        ..limits()
    };
    let server = TestServer::start(docroot(&dir), roomy, ServerSettings::default());
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 4096];
    let read = stream.read(&mut first).unwrap();
    assert!(first[..read].starts_with(b"HTTP/1.1 200"));
    drop(stream);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let counted = loop {
        let text = server.metrics.render();
        if text.contains("outcome=\"client-closed\"") {
            break true;
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = server.metrics.render();
    assert!(counted, "{text}");
    assert!(!text.contains("outcome=\"lua-error\""), "{text}");
}

/// The host of a request is decided once: with an absolute-form target, its
/// authority (RFC 9112: the `Host` header is then ignored) both picks the
/// tenant and is `ngx.var.host`; a script that sets the Host header sees it
/// there, as in ngx_lua.
#[test]
fn the_host_of_an_absolute_form_request_is_its_authority() {
    let site = common::site::Site::start(
        "absolute_form_host",
        "",
        "",
        "",
        &[
            ("root/host.lua", "ngx.say(ngx.var.host)"),
            (
                "root/set.lua",
                "ngx.req.set_header('Host', 'Other.Example:81') ngx.say(ngx.var.host)",
            ),
        ],
    );
    let reply = site.get("http://Target.Example:8080/host.lua");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, "target.example\n");
    assert_eq!(site.get("/host.lua").body, "localhost\n");
    assert_eq!(site.get("/set.lua").body, "other.example\n");
}

/// Read what `stream` says for up to `wait`: whether the server closed it
/// (end of stream or reset) meanwhile, and the bytes it sent.
fn closes_within(stream: &mut TcpStream, wait: Duration) -> (bool, String) {
    let deadline = std::time::Instant::now() + wait;
    let mut said = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return (false, String::from_utf8_lossy(&said).into_owned());
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buffer) {
            Ok(0) => return (true, String::from_utf8_lossy(&said).into_owned()),
            Ok(n) => said.extend_from_slice(&buffer[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (false, String::from_utf8_lossy(&said).into_owned());
            }
            Err(_) => return (true, String::from_utf8_lossy(&said).into_owned()),
        }
    }
}

/// Send a keep-alive GET of `path` on `stream` and read its one response
/// (a static file: its length is known): the status, 0 if the connection
/// ended first.
fn get_on(stream: &mut TcpStream, path: &str) -> u16 {
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return 0;
    }
    let mut response = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&response[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse().ok())
                .unwrap_or(0);
            if response.len() >= end + 4 + length {
                return status_of(&head);
            }
        }
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return 0,
            Ok(n) => response.extend_from_slice(&buffer[..n]),
        }
    }
}

/// Connections must send a request head in time, from the moment they are
/// accepted: one that sends nothing (before HTTP/1 is told from HTTP/2),
/// or only the HTTP/2 preface, is closed after the header timeout, and
/// others are served meanwhile.
#[test]
fn connections_that_send_no_request_are_closed_after_the_header_timeout() {
    let dir = site("silent-clients", &[("index.lua", "ngx.say('served')")]);
    let settings = ServerSettings {
        header_read_timeout: Duration::from_secs(1),
        ..ServerSettings::default()
    };
    let server = TestServer::start(docroot(&dir), limits(), settings);
    let mut silent = TcpStream::connect(server.addr).unwrap();
    let mut preface_only = TcpStream::connect(server.addr).unwrap();
    preface_only
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .unwrap();
    assert_eq!(body_of(&get(server.addr, "/").1), "served\n");
    let (closed, said) = closes_within(&mut silent, Duration::from_secs(30));
    assert!(closed, "a connection that sent nothing is still open");
    assert!(said.is_empty(), "{said:?}");
    let (closed, _) = closes_within(&mut preface_only, Duration::from_secs(30));
    assert!(
        closed,
        "a connection that sent only the HTTP/2 preface is still open"
    );
    assert_eq!(body_of(&get(server.addr, "/").1), "served\n");
}

/// An HTTP/2 connection with no open stream is closed after the idle
/// timeout (GOAWAY, then closed), once it has served its requests.
#[test]
fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    let dir = site("h2-idle", &[("index.lua", "ngx.say('served')")]);
    let settings = ServerSettings {
        idle_timeout: Duration::from_secs(1),
        ..ServerSettings::default()
    };
    let server = TestServer::start(docroot(&dir), limits(), settings);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use http_body_util::BodyExt;
        let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .unwrap();
        let connection = tokio::spawn(connection);
        for _ in 0..2 {
            let request = hyper::Request::builder()
                .uri(format!("http://{}/", server.addr))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            assert_eq!(response.status(), 200);
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"served\n");
        }
        // The client keeps its connection open; the server ends it.
        tokio::time::timeout(Duration::from_secs(30), connection)
            .await
            .expect("the idle HTTP/2 connection is still open")
            .unwrap()
            .unwrap();
        drop(sender);
    });
}

/// A client that sends a request head and then stalls its body gets 408
/// and its connection closed after the body timeout, and the connection
/// slot it held serves others again.
#[test]
fn a_stalled_request_body_gets_408_and_frees_its_connection() {
    let dir = site("stalled-body", &[("index.lua", "ngx.say('served')")]);
    let settings = ServerSettings {
        max_connections: 1,
        body_timeout: Duration::from_secs(1),
        ..ServerSettings::default()
    };
    let server = TestServer::start(docroot(&dir), limits(), settings);
    let mut stalled = TcpStream::connect(server.addr).unwrap();
    stalled
        .write_all(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly this")
        .unwrap();
    let (closed, said) = closes_within(&mut stalled, Duration::from_secs(30));
    assert!(
        closed,
        "a connection with a stalled body is still open: {said:?}"
    );
    assert_eq!(status_of(&said), 408, "{said}");
    // The only connection slot is free again.
    assert_eq!(body_of(&get(server.addr, "/").1), "served\n");
}

/// A body trickled in a byte at a time, slower than the minimum rate, is
/// cut off before it is complete (408), though no single wait is long.
#[test]
fn a_trickled_request_body_is_cut_off_at_the_minimum_rate() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = site("trickled-body", &[("index.lua", "ngx.say('served')")]);
    let settings = ServerSettings {
        body_timeout: Duration::from_secs(1),
        min_body_bytes_per_sec: 10,
        ..ServerSettings::default()
    };
    let server = TestServer::start(docroot(&dir), limits(), settings);
    const LENGTH: usize = 100;
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .write_all(
            format!("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: {LENGTH}\r\n\r\n").as_bytes(),
        )
        .unwrap();
    let answered = Arc::new(AtomicBool::new(false));
    let mut reader = stream.try_clone().unwrap();
    let reader = std::thread::spawn({
        let answered = answered.clone();
        move || {
            let outcome = closes_within(&mut reader, Duration::from_secs(60));
            answered.store(true, Ordering::SeqCst);
            outcome
        }
    });
    // A byte every 200 ms (5 bytes a second, half the minimum): the whole
    // body would take 20 s.
    let mut sent = 0;
    while sent < LENGTH && !answered.load(Ordering::SeqCst) {
        if stream.write_all(b"x").is_err() {
            break;
        }
        sent += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let (closed, said) = reader.join().unwrap();
    assert!(closed, "{said}");
    assert!(sent < LENGTH, "the whole trickled body was read: {said}");
    assert_eq!(status_of(&said), 408, "{said}");
}

/// With a cap of N connections per client address, the N+1th connection
/// from 127.0.0.1 is closed at once, unserved, while requests on the N
/// open ones are still served; once one closes, a new one is served.
#[test]
fn connections_beyond_the_per_client_cap_are_closed_at_once() {
    let dir = site("per-client-cap", &[("hi.txt", "hi")]);
    let settings = ServerSettings {
        max_connections_per_client: 2,
        ..ServerSettings::default()
    };
    let server = TestServer::start(docroot(&dir), limits(), settings);
    let mut first = TcpStream::connect(server.addr).unwrap();
    let mut second = TcpStream::connect(server.addr).unwrap();
    assert_eq!(get_on(&mut first, "/hi.txt"), 200);
    assert_eq!(get_on(&mut second, "/hi.txt"), 200);
    for _ in 0..3 {
        let mut third = TcpStream::connect(server.addr).unwrap();
        assert_eq!(get_on(&mut third, "/hi.txt"), 0, "served beyond the cap");
    }
    // The connections within the cap still work.
    assert_eq!(get_on(&mut first, "/hi.txt"), 200);
    assert_eq!(get_on(&mut second, "/hi.txt"), 200);
    drop(first);
    // Once the server has seen it close, its place is free.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut another = TcpStream::connect(server.addr).unwrap();
        if get_on(&mut another, "/hi.txt") == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a closed connection's place was not freed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(get_on(&mut second, "/hi.txt"), 200);
}

/// A directory of the root swapped for a symlink to a directory outside it,
/// over and over, while its files are requested: what the router checked is
/// what is read, so nothing from outside is ever served (before the fix,
/// the file was opened again by its path after the check, and the outside
/// one was served several times in 1,500).
#[test]
fn swapping_a_directory_for_a_symlink_never_serves_from_outside_the_root() {
    use std::sync::atomic::{AtomicBool, Ordering};

    let outside = site(
        "race-outside",
        &[
            ("file.txt", "TOP-SECRET"),
            ("s.lua", "ngx.say('TOP-SECRET')"),
        ],
    );
    let dir = site(
        "race-root",
        &[("d/file.txt", "inside"), ("d/s.lua", "ngx.say('inside')")],
    );
    // Where `d` and the symlink wait their turn: beside the root, on the
    // same file system, so that each move is one rename.
    let stage = site("race-stage", &[]);
    std::fs::create_dir_all(&stage).unwrap();
    std::os::unix::fs::symlink(&outside, stage.join("link")).unwrap();
    let server = TestServer::start(docroot(&dir), limits(), ServerSettings::default());
    assert!(body_of(&get(server.addr, "/d/file.txt").1).contains("inside"));

    let stop = Arc::new(AtomicBool::new(false));
    let swapper = std::thread::spawn({
        let (d, stop) = (dir.join("d"), stop.clone());
        let (parked, link) = (stage.join("d"), stage.join("link"));
        move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                std::fs::rename(&d, &parked).unwrap();
                std::fs::rename(&link, &d).unwrap();
                std::fs::rename(&d, &link).unwrap();
                std::fs::rename(&parked, &d).unwrap();
                swaps += 1;
            }
            swaps
        }
    });
    let mut leaked = Vec::new();
    let mut served = [0u32; 2];
    for attempt in 0..1500 {
        let (kind, path) = [(0, "/d/file.txt"), (1, "/d/s.lua")][attempt % 2];
        let (status, response) = get(server.addr, path);
        if response.contains("TOP-SECRET") {
            leaked.push(path);
        } else if status == 200 {
            assert_eq!(body_of(&response).trim(), "inside", "{path}: {response}");
            served[kind] += 1;
        } else {
            assert!(status == 404 || status == 500, "{path}: {response}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(
        leaked.is_empty(),
        "served from outside the root {} times of 1500 ({swaps} swaps): {leaked:?}",
        leaked.len()
    );
    assert!(swaps > 0);
    // The files inside stayed reachable while it lasted.
    assert!(served[0] > 0 && served[1] > 0, "{served:?}");
    assert_eq!(get(server.addr, "/d/file.txt").0, 200);
}

/// A symlink in the root is followed as long as it stays beneath the root
/// (relative, never climbing out); one that leads outside, or an absolute
/// one (as for `read_dirs`), is refused like a missing file.
#[test]
fn symlinks_are_followed_only_beneath_the_root() {
    let outside = site("links-outside", &[("secret.txt", "TOP-SECRET")]);
    let dir = site(
        "links-root",
        &[
            ("sub/real.txt", "real text"),
            ("sub/real.lua", "ngx.say('real script')"),
            ("sub/index.lua", "ngx.say('sub index')"),
        ],
    );
    let link =
        |target: &Path, name: &str| std::os::unix::fs::symlink(target, dir.join(name)).unwrap();
    link(Path::new("sub/real.txt"), "alias.txt");
    link(Path::new("sub/real.lua"), "alias.lua");
    link(Path::new("sub"), "linked");
    link(Path::new("../links-outside/secret.txt"), "climb.txt");
    link(&dir.join("sub/real.txt"), "absolute.txt");
    link(&outside, "out");
    let server = TestServer::start(docroot(&dir), limits(), ServerSettings::default());
    for (path, body) in [
        ("/alias.txt", "real text"),
        ("/alias.lua", "real script\n"),
        ("/linked", "sub index\n"),
        ("/linked/real", "real script\n"),
        ("/linked/real.txt", "real text"),
    ] {
        let (status, response) = get(server.addr, path);
        assert_eq!((status, body_of(&response).as_str()), (200, body), "{path}");
    }
    for path in ["/climb.txt", "/absolute.txt", "/out/secret.txt", "/out/"] {
        let (status, response) = get(server.addr, path);
        assert_eq!(status, 404, "{path}: {response}");
        assert!(!response.contains("TOP-SECRET"), "{path}: {response}");
    }
}

/// An HTTP/2 request of `path` on stream `id` (GET, HPACK literals), its
/// head the whole request.
fn h2_get(id: u32, path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86]; // :method GET, :scheme http
    block.push(0x04); // :path, a literal not indexed
    block.push(path.len() as u8);
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x01, 0x01, b't']); // :authority t
    let mut frame = (block.len() as u32).to_be_bytes()[1..].to_vec();
    frame.extend_from_slice(&[0x01, 0x05]); // HEADERS, END_STREAM | END_HEADERS
    frame.extend_from_slice(&id.to_be_bytes());
    frame.extend_from_slice(&block);
    frame
}

/// An HTTP/2 connection's start that lets the server send up to 2 GiB
/// without waiting for the client: the preface, SETTINGS with the largest
/// stream window, and a WINDOW_UPDATE of the connection's to the largest.
fn h2_wide_open() -> Vec<u8> {
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend_from_slice(&[0, 0, 6, 0x04, 0, 0, 0, 0, 0]);
    bytes.extend_from_slice(&[0, 4, 0x7f, 0xff, 0xff, 0xff]); // INITIAL_WINDOW_SIZE
    bytes.extend_from_slice(&[0, 0, 4, 0x08, 0, 0, 0, 0, 0]);
    bytes.extend_from_slice(&(0x7fff_ffffu32 - 65_535).to_be_bytes());
    bytes
}

/// The requests the server counted with `outcome`, over every status.
fn outcomes(server: &TestServer, outcome: &str) -> u64 {
    let label = format!("outcome=\"{outcome}\"}}");
    server
        .metrics
        .render()
        .lines()
        .filter(|line| line.starts_with("moonwall_requests_total{") && line.contains(&label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A site of a script streaming 32 MiB in flushed chunks of 64 KiB, a
/// 32 MiB static file, and a small page; limits that let the script write it
/// all and wait long for its client.
fn big_responses(name: &str) -> (PathBuf, Limits) {
    let dir = site(
        name,
        &[
            ("index.lua", "ngx.say('served')"),
            (
                "stream.lua",
                "local chunk = string.rep('x', 65536) \
                 for _ = 1, 512 do ngx.print(chunk) ngx.flush(true) end",
            ),
        ],
    );
    std::fs::write(dir.join("big.bin"), vec![b'y'; BIG]).unwrap();
    let patient = Limits {
        fuel: 20_000_000_000,
        output_bytes: 1 << 30,
        timeout: Duration::from_secs(120),
        ..limits()
    };
    (dir, patient)
}

/// The size of each of [`big_responses`]' bodies, far more than the
/// kernel's socket buffers of a client that reads nothing hold.
const BIG: usize = 32 << 20;

/// A client that asks for a large response and then reads none of it
/// (HTTP/1: a static file and a streaming script; HTTP/2: both on one
/// connection that lets the server send all without flow control) is cut
/// off once the server's writes have waited the send timeout, while the
/// client still reads nothing: its connections' places among its address's
/// are given back, the scripts writing to it end as when a client goes away
/// (client-closed), and when it does read, each connection ends after what
/// the socket buffers held, far short of the response. Others are served
/// meanwhile. Before the send timeout, these connections (and the scripts'
/// runs) stayed as long as the client liked.
#[test]
fn a_client_that_stops_reading_is_closed_after_the_send_timeout() {
    let (dir, patient) = big_responses("stops-reading");
    std::fs::write(dir.join("hi.txt"), "hi").unwrap();
    // Room for the three stalled connections and one more from this
    // address; probes served keep their places (no header or idle timeout
    // soon).
    const PLACES: usize = 4;
    let settings = ServerSettings {
        send_timeout: Duration::from_secs(1),
        max_connections_per_client: PLACES,
        header_read_timeout: Duration::from_secs(300),
        idle_timeout: Duration::from_secs(300),
        ..ServerSettings::default()
    };
    let server = TestServer::start(docroot(&dir), patient, settings);
    let stalled = |request: &[u8]| {
        let mut stream = TcpStream::connect(server.addr).unwrap();
        stream.write_all(request).unwrap();
        stream
    };
    let mut file = stalled(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut script = stalled(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut h2 = h2_wide_open();
    h2.extend(h2_get(1, "/big.bin"));
    h2.extend(h2_get(3, "/stream"));
    let mut both = stalled(&h2);
    assert_eq!(body_of(&get(server.addr, "/").1), "served\n");

    // Nothing is read meanwhile. Probes hold the places they get: all
    // PLACES are had once the three stalled connections are closed.
    let mut held = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while held.len() < PLACES && std::time::Instant::now() < deadline {
        let mut probe = TcpStream::connect(server.addr).unwrap();
        if get_on(&mut probe, "/hi.txt") == 200 {
            held.push(probe);
        } else {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert_eq!(
        held.len(),
        PLACES,
        "connections of a client that reads nothing are still open"
    );
    // The two scripts' runs ended, their client gone.
    while outcomes(&server, "client-closed") < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        outcomes(&server, "client-closed"),
        2,
        "the scripts writing to clients that read nothing still run:\n{}",
        server.metrics.render()
    );
    assert_eq!(outcomes(&server, "lua-error"), 0);

    for (name, stream) in [
        ("file", &mut file),
        ("script", &mut script),
        ("h2", &mut both),
    ] {
        let (closed, said) = closes_within(stream, Duration::from_secs(60));
        assert!(closed, "{name}: the connection is still open");
        assert!(
            said.len() < BIG,
            "{name}: the whole response came ({} bytes)",
            said.len()
        );
        if name != "h2" {
            assert_eq!(status_of(&said), 200, "{name}");
        }
    }
    // Still serving (on a place held: the cap is full of them).
    assert_eq!(get_on(&mut held[0], "/hi.txt"), 200);
}

/// An HTTP/2 stream its client keeps shut (it never opens the stream's
/// flow-control window past the first 64 KiB, while the connection itself
/// stays healthy, so no send timeout applies) holds the script writing to it
/// no longer than the run's time limit: waiting to write counts against
/// `timeout_ms` like any wait. Before, the run waited for the window forever
/// (still running a minute later), holding its place in flight.
#[test]
fn a_script_writing_to_a_shut_http2_stream_stops_at_its_time_limit() {
    let (dir, patient) = big_responses("shut-h2-stream");
    let limits = Limits {
        timeout: Duration::from_secs(2),
        ..patient
    };
    let server = TestServer::start(docroot(&dir), limits, ServerSettings::default());
    let mut stream = TcpStream::connect(server.addr).unwrap();
    let mut h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS with none: the default windows, 65,535 bytes.
    h2.extend_from_slice(&[0, 0, 0, 0x04, 0, 0, 0, 0, 0]);
    h2.extend(h2_get(1, "/stream"));
    stream.write_all(&h2).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while outcomes(&server, "limit-time") < 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        outcomes(&server, "limit-time"),
        1,
        "the script writing to a shut stream still runs:\n{}",
        server.metrics.render()
    );
    drop(stream);
}

/// The send timeout is between writes, not for a whole response: a client
/// that reads slowly but steadily (at most 1 MiB every 200 ms, through a
/// receive buffer of its own size) gets all of a 32 MiB file and a 32 MiB
/// stream, each taking at least 32 reads 200 ms apart, several times the
/// 1 s timeout.
#[test]
fn a_slow_but_steady_reader_gets_the_whole_response() {
    use std::os::fd::AsRawFd;
    let (dir, patient) = big_responses("slow-reader");
    let settings = ServerSettings {
        send_timeout: Duration::from_secs(1),
        ..ServerSettings::default()
    };
    let server = TestServer::start(docroot(&dir), patient, settings);
    let addr = server.addr;
    let read_slowly = move |path: &'static str| {
        std::thread::spawn(move || {
            let mut stream = TcpStream::connect(addr).unwrap();
            // A fixed receive buffer (the kernel's autotuning would take
            // the whole response in at once).
            let size: libc::c_int = 1 << 20;
            // SAFETY: a live socket, and the option's value lives here.
            let set = unsafe {
                libc::setsockopt(
                    stream.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUF,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(set, 0, "SO_RCVBUF");
            let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            let mut response = Vec::new();
            let mut buffer = vec![0u8; 1 << 20];
            loop {
                match stream.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(n) => response.extend_from_slice(&buffer[..n]),
                    Err(error) => panic!("{path}: after {} bytes: {error}", response.len()),
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            response
        })
    };
    let file = read_slowly("/big.bin");
    let script = read_slowly("/stream");
    for (path, reader) in [("/big.bin", file), ("/stream", script)] {
        let response = reader.join().unwrap();
        let response = String::from_utf8_lossy(&response);
        assert_eq!(status_of(&response), 200, "{path}");
        let body = body_of(&response);
        assert_eq!(body.len(), BIG, "{path}");
        assert!(body.bytes().all(|b| b == b'x' || b == b'y'), "{path}");
    }
    assert_eq!(outcomes(&server, "client-closed"), 0);
}
