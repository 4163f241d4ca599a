//! Behaviour documented for OpenResty's lua-nginx-module, ported as data:
//! every `[[case]]` in tests/openresty/*.toml is one request run through its
//! phase scripts, with the response it must produce. Each case runs three
//! ways: through the library, through the `moonwall request` command, and
//! through a live server over HTTP.
//!
//! ```toml
//! [[case]]
//! name = "ngx.say joins its arguments"        # unique
//! from = "t/002-content.t TEST 1"             # where the behaviour is documented
//! request = "GET /t?a=1"                      # method and path
//! headers = ["Cookie: a=1"]                   # optional request headers
//! body = "x=1"                                # optional request body
//! content = '''ngx.say("a", 1)'''             # rewrite/access/content/header_filter/body_filter/log
//! status = 200                                # expected status (default 200)
//! response_body = "a1\n"                      # expected body, exact (optional)
//! body_contains = ["..."]                     # or fragments it must contain
//! response_headers = { "x-a" = "1" }          # headers it must have (lowercase names)
//! absent_headers = ["x-b"]                    # headers it must not have
//! outcome = "ok"                              # ok | lua-error | limit-fuel | ... (default ok)
//! error_contains = "..."                      # for lua-error: part of the message
//! ```

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use moonwall::http::request::RequestHead;
use moonwall::http::routing::{Location, Locations, Match, Router};
use moonwall::http::scripts::PhaseScripts;
use moonwall::http::server::{App, ServerSettings, serve};
use moonwall::http::{CollectedResponse, Handlers, HttpOutcome, RequestLog, Source};
use moonwall::{EngineSettings, Sandbox};

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    from: String,
    request: String,
    #[serde(default)]
    headers: Vec<String>,
    #[serde(default)]
    body: String,
    rewrite: Option<String>,
    access: Option<String>,
    content: Option<String>,
    header_filter: Option<String>,
    body_filter: Option<String>,
    log: Option<String>,
    #[serde(default = "ok_status")]
    status: u16,
    response_body: Option<String>,
    #[serde(default)]
    body_contains: Vec<String>,
    #[serde(default)]
    response_headers: BTreeMap<String, String>,
    #[serde(default)]
    absent_headers: Vec<String>,
    #[serde(default = "ok_outcome")]
    outcome: String,
    error_contains: Option<String>,
}

fn ok_status() -> u16 {
    200
}

fn ok_outcome() -> String {
    "ok".into()
}

#[derive(Debug, serde::Deserialize)]
struct CaseFile {
    case: Vec<Case>,
}

fn source(phase: &str, code: &Option<String>) -> Option<Source> {
    code.as_ref().map(|code| Source {
        name: format!("@{phase}.lua"),
        code: code.as_bytes().to_vec(),
        binary: false,
    })
}

/// What one way of running a case produced.
struct Observed {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The outcome label, where that way of running can see it.
    outcome: Option<String>,
    /// The Lua error's message (library) or the error log (CLI).
    error_text: Option<String>,
}

const PHASES: [&str; 6] = [
    "rewrite",
    "access",
    "content",
    "header_filter",
    "body_filter",
    "log",
];

fn phase_code(case: &Case, phase: &str) -> Option<String> {
    match phase {
        "rewrite" => case.rewrite.clone(),
        "access" => case.access.clone(),
        "content" => case.content.clone(),
        "header_filter" => case.header_filter.clone(),
        "body_filter" => case.body_filter.clone(),
        _ => case.log.clone(),
    }
}

fn method_and_target(case: &Case) -> (&str, &str) {
    case.request
        .split_once(' ')
        .unwrap_or(("GET", case.request.as_str()))
}

fn hyper_request(case: &Case) -> hyper::http::request::Builder {
    let (method, target) = method_and_target(case);
    // The headers OpenResty's test harness (Test::Nginx) sends, then the case's.
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(target)
        .header("host", "localhost")
        .header("connection", "close");
    for header in &case.headers {
        let (name, value) = header.split_once(':').expect("headers are `Name: value`");
        builder = builder.header(name.trim(), value.trim());
    }
    builder
}

/// Through the library, as `moonwall request` and the server call it.
fn via_library(case: &Case) -> Observed {
    let mut builder = hyper_request(case);
    if !case.body.is_empty() {
        builder = builder.header("content-length", case.body.len());
    }
    let parts = builder.body(()).expect("a valid request").into_parts().0;
    let head = RequestHead::from_parts(&parts).expect("a valid path");
    let request = head.into_request(
        case.body.as_bytes().to_vec(),
        ([127, 0, 0, 1], 8080).into(),
        ([127, 0, 0, 1], 40000).into(),
        None,
    );
    let handlers = Handlers {
        rewrite: source("rewrite", &case.rewrite),
        access: source("access", &case.access),
        content: source("content", &case.content),
        header_filter: source("header_filter", &case.header_filter),
        body_filter: source("body_filter", &case.body_filter),
        log: source("log", &case.log),
        balancer: None,
    };
    let (report, sink) = common::sandbox()
        .serve_request(
            &request,
            &handlers,
            &common::test_limits(),
            Box::new(CollectedResponse::default()),
            RequestLog::new(0, case.name.clone()),
            moonwall::caps::RequestCaps::none(),
        )
        .expect("the sandbox serves the request");
    let sink: Box<dyn std::any::Any> = sink;
    let response = sink
        .downcast::<CollectedResponse>()
        .expect("a collected response");
    let error_text = match &report.outcome {
        HttpOutcome::LuaError { message, .. } => Some(message.clone()),
        _ => None,
    };
    Observed {
        status: response.status.unwrap_or(0),
        headers: response
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: response.body.clone(),
        outcome: Some(report.outcome.label()),
        error_text,
    }
}

/// The case's scripts as files in `dir` (`content.lua`, ...).
fn write_scripts(case: &Case, dir: &Path) -> PhaseScripts {
    std::fs::create_dir_all(dir).unwrap();
    let mut scripts = PhaseScripts::default();
    for phase in PHASES {
        if let Some(code) = phase_code(case, phase) {
            let path = dir.join(format!("{phase}.lua"));
            std::fs::write(&path, code).unwrap();
            let slot = match phase {
                "rewrite" => &mut scripts.rewrite,
                "access" => &mut scripts.access,
                "content" => &mut scripts.content,
                "header_filter" => &mut scripts.header_filter,
                "body_filter" => &mut scripts.body_filter,
                _ => &mut scripts.log,
            };
            *slot = Some(path.into());
        }
    }
    scripts
}

/// Through the `moonwall request` command.
fn via_cli(case: &Case, dir: &Path) -> Observed {
    write_scripts(case, dir);
    let (method, target) = method_and_target(case);
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_moonwall"));
    command
        .env("MOONWALL_CACHE_DIR", common::cache_dir())
        .arg("request")
        .args([
            "-X",
            method,
            "-H",
            "Host: localhost",
            "-H",
            "Connection: close",
        ]);
    // Run from the case's directory so that messages name `content.lua`.
    command.current_dir(dir);
    for phase in PHASES {
        if phase_code(case, phase).is_some() {
            command
                .arg(format!("--{}", phase.replace('_', "-")))
                .arg(format!("{phase}.lua"));
        }
    }
    for header in &case.headers {
        command.args(["-H", header]);
    }
    if !case.body.is_empty() {
        command.arg(format!("--data={}", case.body));
    }
    let output = command.arg(target).output().expect("moonwall runs");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}: {}",
        case.name,
        String::from_utf8_lossy(&output.stderr)
    );
    let (status, headers, body) = parse_response(&output.stdout);
    Observed {
        status,
        headers,
        body: body.to_vec(),
        outcome: None,
        error_text: Some(String::from_utf8_lossy(&output.stderr).into_owned()),
    }
}

/// Through a live server, over HTTP/1.1 on a raw socket (so that a response
/// cut short still shows what arrived).
fn via_server(
    case: &Case,
    dir: &Path,
    runtime: &tokio::runtime::Runtime,
    sandbox: &Arc<Sandbox>,
) -> Observed {
    use std::io::{Read, Write};
    let scripts = write_scripts(case, dir);
    let locations = Locations {
        locations: vec![Location {
            path: "/".into(),
            matching: Match::Prefix,
            scripts,
            proxy: None,
        }],
        shown_from: dir.to_path_buf(),
    };
    // Some cases send more than the default 100 request headers.
    let settings = ServerSettings {
        max_headers: 1000,
        ..ServerSettings::default()
    };
    let app = App::new(
        sandbox.clone(),
        Router::Locations(locations),
        common::test_limits(),
        settings,
    );
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = runtime.spawn(serve(app, listener, None, async {
        let _ = stopped.await;
    }));

    let (method, target) = method_and_target(case);
    let mut request =
        format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for header in &case.headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    if !case.body.is_empty() {
        request.push_str(&format!("Content-Length: {}\r\n", case.body.len()));
    }
    request.push_str("\r\n");
    request.push_str(&case.body);
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let _ = stop.send(());
    let _ = runtime.block_on(server);

    let (status, headers, payload) = parse_response(&raw);
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v == "chunked");
    let body = if chunked {
        dechunk(payload)
    } else {
        payload.to_vec()
    };
    Observed {
        status,
        headers,
        body,
        outcome: None,
        error_text: None,
    }
}

/// A response as bytes on the wire: the status, the headers, and what
/// follows the blank line (a status of 0 when nothing usable arrived).
fn parse_response(raw: &[u8]) -> (u16, Vec<(String, String)>, &[u8]) {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.get(9..12))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    (status, headers, raw.get(split + 4..).unwrap_or_default())
}

/// Undo chunked transfer encoding, keeping whatever complete chunks arrived.
fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(end) = rest.windows(2).position(|w| w == b"\r\n") {
        let Some(size) = std::str::from_utf8(&rest[..end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
        else {
            break;
        };
        let data = &rest[end + 2..];
        if size == 0 || data.len() < size {
            break;
        }
        body.extend_from_slice(&data[..size]);
        rest = data[size..].strip_prefix(b"\r\n").unwrap_or(&data[size..]);
    }
    body
}

/// Every way `observed` differs from what `case` expects.
fn compare(case: &Case, observed: &Observed) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(outcome) = &observed.outcome
        && *outcome != case.outcome
    {
        problems.push(format!("outcome {outcome}, expected {}", case.outcome));
    }
    if let (Some(fragment), Some(text)) = (&case.error_contains, &observed.error_text)
        && !text.contains(fragment.as_str())
    {
        problems.push(format!("error {text:?} does not contain {fragment:?}"));
    }
    if observed.status != case.status {
        problems.push(format!(
            "status {}, expected {}",
            observed.status, case.status
        ));
    }
    let body = String::from_utf8_lossy(&observed.body);
    if let Some(expected) = &case.response_body
        && body != expected.as_str()
    {
        problems.push(format!("body {body:?}, expected {expected:?}"));
    }
    for fragment in &case.body_contains {
        if !body.contains(fragment.as_str()) {
            problems.push(format!("body {body:?} does not contain {fragment:?}"));
        }
    }
    let header = |name: &str| -> Vec<&str> {
        observed
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    };
    for (name, expected) in &case.response_headers {
        let values = header(name);
        if !values.iter().any(|v| v == expected) {
            problems.push(format!("header {name}: {values:?}, expected {expected:?}"));
        }
    }
    for name in &case.absent_headers {
        if !header(name).is_empty() {
            problems.push(format!("header {name} present: {:?}", header(name)));
        }
    }
    problems
}

#[test]
fn openresty_documented_behaviour() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/openresty");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    let mut total = 0;
    let mut failures = Vec::new();
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("openresty-cases");
    let _ = std::fs::remove_dir_all(&work);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sandbox = Arc::new(
        Sandbox::new(EngineSettings {
            max_instances: 8,
            cache_dir: Some(common::cache_dir()),
            ..EngineSettings::default()
        })
        .unwrap(),
    );
    let mut names = std::collections::HashSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let cases: CaseFile =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for case in cases.case {
            total += 1;
            assert!(
                names.insert(case.name.clone()),
                "duplicate case name {:?}",
                case.name
            );
            assert!(
                !case.from.is_empty(),
                "{}: say where the behaviour is documented",
                case.name
            );
            let dir = work.join(total.to_string());
            let ways = [
                ("library", via_library(&case)),
                ("moonwall request", via_cli(&case, &dir.join("cli"))),
                (
                    "server",
                    via_server(&case, &dir.join("server"), &runtime, &sandbox),
                ),
            ];
            for (way, observed) in &ways {
                for problem in compare(&case, observed) {
                    failures.push(format!(
                        "{} [{}] ({}) via {way}: {problem}",
                        file.file_name().unwrap().to_string_lossy(),
                        case.name,
                        case.from
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} problem(s) in {total} cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
    println!("{total} OpenResty cases passed");
}
