//! Behaviour documented for OpenResty's lua-nginx-module, ported as data:
//! every `[[case]]` in tests/openresty/*.toml is one request run through its
//! phase scripts, with the response it must produce.
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

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use moonwall::http::request::RequestHead;
use moonwall::http::{CollectedResponse, Handlers, HttpOutcome, RequestLog, Source};

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
    })
}

/// Run one case; a description of every way it differs from its expectation.
fn check(case: &Case) -> Vec<String> {
    let (method, target) = case
        .request
        .split_once(' ')
        .unwrap_or(("GET", case.request.as_str()));
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(target)
        .header("host", "localhost");
    for header in &case.headers {
        let (name, value) = header.split_once(':').expect("headers are `Name: value`");
        builder = builder.header(name.trim(), value.trim());
    }
    if !case.body.is_empty() {
        builder = builder.header("content-length", case.body.len());
    }
    let parts = builder.body(()).expect("a valid request").into_parts().0;
    let head = RequestHead::from_parts(&parts).expect("a valid path");
    let request = head.into_request(
        case.body.as_bytes().to_vec(),
        "http",
        ([127, 0, 0, 1], 8080).into(),
        ([127, 0, 0, 1], 40000).into(),
    );
    let handlers = Handlers {
        rewrite: source("rewrite", &case.rewrite),
        access: source("access", &case.access),
        content: source("content", &case.content),
        header_filter: source("header_filter", &case.header_filter),
        body_filter: source("body_filter", &case.body_filter),
        log: source("log", &case.log),
    };
    let (report, sink) = common::sandbox()
        .serve_request(
            &request,
            &handlers,
            &common::test_limits(),
            Box::new(CollectedResponse::default()),
            RequestLog::new(0, case.name.clone()),
        )
        .expect("the sandbox serves the request");
    let sink: Box<dyn std::any::Any> = sink;
    let response = sink
        .downcast::<CollectedResponse>()
        .expect("a collected response");

    let mut problems = Vec::new();
    let outcome = report.outcome.label();
    if outcome != case.outcome {
        problems.push(format!(
            "outcome {outcome} ({:?}), expected {}",
            report.outcome, case.outcome
        ));
    }
    if let (Some(fragment), HttpOutcome::LuaError { message, .. }) =
        (&case.error_contains, &report.outcome)
        && !message.contains(fragment.as_str())
    {
        problems.push(format!("error {message:?} does not contain {fragment:?}"));
    }
    let status = response.status.unwrap_or(0);
    if status != case.status {
        problems.push(format!("status {status}, expected {}", case.status));
    }
    let body = String::from_utf8_lossy(&response.body);
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
    let header = |name: &str| -> Vec<String> {
        response
            .headers
            .iter()
            .filter(|(n, _)| n.as_str() == name)
            .map(|(_, v)| String::from_utf8_lossy(v.as_bytes()).into_owned())
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
            for problem in check(&case) {
                failures.push(format!(
                    "{} [{}] ({}): {problem}",
                    file.file_name().unwrap().to_string_lossy(),
                    case.name,
                    case.from
                ));
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
