//! `moonwall request PATH`: run one request through the phases without a
//! server (like OpenResty's `resty` command) and print the response.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use super::exit;
use super::limits::LimitArgs;
use crate::http::request::RequestHead;
use crate::http::scripts::PhaseScripts;
use crate::http::{CollectedResponse, RequestLog};
use crate::runtime::Sandbox;
use crate::site::routing::ScriptFile;

#[derive(Debug, Args)]
pub struct RequestArgs {
    /// Script for the rewrite phase.
    #[arg(long, value_name = "FILE")]
    pub rewrite: Option<PathBuf>,
    /// Script for the access phase.
    #[arg(long, value_name = "FILE")]
    pub access: Option<PathBuf>,
    /// Script for the content phase.
    #[arg(long, value_name = "FILE")]
    pub content: Option<PathBuf>,
    /// Script for the header filter.
    #[arg(long, value_name = "FILE")]
    pub header_filter: Option<PathBuf>,
    /// Script for the body filter.
    #[arg(long, value_name = "FILE")]
    pub body_filter: Option<PathBuf>,
    /// Script for the log phase.
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,

    /// Request method.
    #[arg(
        short = 'X',
        long = "method",
        value_name = "METHOD",
        default_value = "GET"
    )]
    pub method: String,

    /// A request header, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,

    /// Request body: the text itself, or `@FILE` to read it from FILE.
    #[arg(long, value_name = "STR|@FILE", allow_hyphen_values = true)]
    pub data: Option<String>,

    #[command(flatten)]
    pub limits: LimitArgs,

    /// Run under this tenant policy: its `[capabilities]` are granted
    /// (shared dicts start empty, in memory) and its `[limits]` replace the
    /// limit flags. Its directories must lie under the current directory.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,

    /// The request path, with its query: `/hello?name=you`.
    #[arg(value_name = "PATH")]
    pub path: String,
}

fn usage(message: String) -> u8 {
    eprintln!("error: {message}");
    exit::USAGE
}

pub fn run(args: RequestArgs) -> u8 {
    super::init_logging(false);
    let scripts = PhaseScripts {
        rewrite: args.rewrite.clone().map(ScriptFile::from),
        access: args.access.clone().map(ScriptFile::from),
        content: args.content.clone().map(ScriptFile::from),
        header_filter: args.header_filter.clone().map(ScriptFile::from),
        body_filter: args.body_filter.clone().map(ScriptFile::from),
        log: args.log.clone().map(ScriptFile::from),
        balancer: None,
    };
    let handlers = match scripts.load(std::path::Path::new("")) {
        Ok(handlers) => handlers,
        Err(error) => return usage(error.to_string()),
    };
    let body = match &args.data {
        None => Vec::new(),
        Some(data) => match data.strip_prefix('@') {
            Some(file) => match std::fs::read(file) {
                Ok(body) => body,
                Err(error) => return usage(format!("cannot read {file}: {error}")),
            },
            None => data.clone().into_bytes(),
        },
    };
    let mut builder = hyper::Request::builder()
        .method(args.method.as_str())
        .uri(args.path.as_str());
    let mut has_host = false;
    for header in &args.headers {
        let Some((name, value)) = header.split_once(':') else {
            return usage(format!("header `{header}` is not `Name: value`"));
        };
        has_host |= name.trim().eq_ignore_ascii_case("host");
        builder = builder.header(name.trim(), value.trim());
    }
    if !has_host {
        builder = builder.header(hyper::header::HOST, "localhost");
    }
    if !body.is_empty() {
        builder = builder.header(hyper::header::CONTENT_LENGTH, body.len());
    }
    let parts = match builder.body(()) {
        Ok(request) => request.into_parts().0,
        Err(error) => return usage(format!("invalid request: {error}")),
    };
    let head = match RequestHead::from_parts(&parts) {
        Ok(head) => head,
        Err(error) => return usage(format!("invalid path {}: {error}", args.path)),
    };
    let local: SocketAddr = ([127, 0, 0, 1], 80).into();
    let remote: SocketAddr = ([127, 0, 0, 1], 0).into();
    let request = head.into_request(body, local, remote, None);

    let (limits, caps, init) = match &args.policy {
        None => (args.limits.limits(), crate::caps::RequestCaps::none(), None),
        Some(file) => match policy_caps(file) {
            Ok(found) => found,
            Err(code) => return code,
        },
    };
    let sandbox = match Sandbox::new(args.limits.engine_settings(2)) {
        Ok(sandbox) => sandbox,
        Err(error) => {
            eprintln!("error: {error}");
            return exit::INTERNAL;
        }
    };
    // The policy's init script runs first; the request starts from its state.
    let prepared = match &init {
        Some((script, root)) => {
            match crate::tenants::prepare_init(&sandbox, script, root, &limits, caps.grants.clone())
            {
                Ok(prepared) => Some(prepared),
                Err(error) => return usage(error),
            }
        }
        None => None,
    };
    let log = RequestLog::new(1, args.path.clone());
    let sink = Box::new(CollectedResponse::default());
    let served = match &prepared {
        Some(guest) => {
            sandbox.serve_request_from(guest, &request, &handlers, &limits, sink, log, caps)
        }
        None => sandbox.serve_request(&request, &handlers, &limits, sink, log, caps),
    };
    let (_report, sink) = match served {
        Ok(result) => result,
        Err(error) => {
            eprintln!("error: {error}");
            return exit::INTERNAL;
        }
    };
    let sink: Box<dyn std::any::Any> = sink;
    let Ok(response) = sink.downcast::<CollectedResponse>() else {
        unreachable!("serve_request returns the sink it was given")
    };
    print_response(&response);
    exit::OK
}

/// `HTTP/1.1 200 OK`, the headers, a blank line and the body, as on the wire.
/// The limits and grants of the tenant policy `file`, its directories
/// confined to the current directory, and its init script with the root it
/// is shown from; on a bad policy, its problems are printed and the exit
/// code returned.
fn policy_caps(file: &std::path::Path) -> Result<PolicyCaps, u8> {
    use crate::tenants::policy::{Ceilings, Policy};
    let cwd = std::env::current_dir()
        .and_then(|dir| dir.canonicalize())
        .map_err(|error| usage(format!("the current directory: {error}")))?;
    let policy =
        Policy::load(file, &Ceilings::default(), &[cwd], &Default::default()).map_err(|error| {
            for problem in &error.problems {
                eprintln!("{problem}");
            }
            exit::USAGE
        })?;
    let grants = crate::caps::Grants::from_policy(
        &policy.tenant,
        &policy.capabilities,
        None,
        &crate::caps::CapsSettings::default(),
    )
    .map_err(|error| usage(format!("{}: {error}", file.display())))?;
    Ok((
        policy.limits.sandbox,
        crate::caps::RequestCaps::of(std::sync::Arc::new(grants)),
        policy.init_script.map(|script| (script, policy.root)),
    ))
}

type PolicyCaps = (
    crate::sandbox::Limits,
    crate::caps::RequestCaps,
    Option<(ScriptFile, std::path::PathBuf)>,
);

fn print_response(response: &CollectedResponse) {
    let status = response.status.unwrap_or(500);
    let reason = hyper::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut out = Vec::new();
    out.extend_from_slice(format!("HTTP/1.1 {status} {reason}\r\n").as_bytes());
    for (name, value) in &response.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&response.body);
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(&out);
    let _ = stdout.flush();
}
