//! Subrequests (`ngx.location.capture` and `capture_multi`): a request's
//! script asks for another URI of the same tenant, which is routed by the
//! tenant's router and served in an instance of its own, under the tenant's
//! limits, with the response collected in memory for the parent.
//!
//! Bounds: [`MAX_SUBREQUESTS`] for a client's request and all its
//! subrequests together, [`MAX_SUBREQUEST_DEPTH`] levels, and each
//! subrequest's response body under the tenant's response limit (it is a
//! run of its own). A parent's wait for its subrequests ends at the parent's
//! deadline; the subrequests' instances are dropped with it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::bindings::header_block::{self, HeaderBlockError};
use crate::bindings::moonwall::sandbox::http_types::{Header, Request};
use crate::bindings::moonwall::sandbox::tasks::{Subrequest, Subresponse};
use crate::caps::RequestCaps;
use crate::caps::tasks::{Captured, Subrequests};
use crate::sandbox::memory_pool::Reservation;
use crate::sandbox::{FuelPool, MemoryPool, log_text};
use crate::tenants::Tenant;

use super::app::App;
use super::phases::ServeJob;
use super::request::normalize_path;
use super::static_files::{self, StaticFile};
use crate::caps::http::{CollectedResponse, RequestLog};
use crate::site::routing::Route;

/// Most subrequests a client's request may start, at all levels together.
pub const MAX_SUBREQUESTS: u32 = 50;
/// Most levels of subrequests inside subrequests.
pub const MAX_SUBREQUEST_DEPTH: u32 = 4;
/// Most headers a subrequest may carry (the guest refuses more first, with
/// "capture: too many headers").
const MAX_SUBREQUEST_HEADERS: usize = 1000;
/// Most header bytes (names and values) a subrequest may carry.
const MAX_SUBREQUEST_HEADER_BYTES: usize = 64 * 1024;

/// The subrequests of one client's request (shared by all its levels).
pub(crate) struct TenantSubrequests {
    app: Arc<App>,
    tenant: Arc<Tenant>,
    /// The client's request: where subrequests take the connection's
    /// details from.
    parent: Request,
    /// The client request's log: its subrequests' lines share its budget.
    log: RequestLog,
    /// The fuel the client's request and all its subrequests share.
    fuel: Arc<FuelPool>,
    /// The outbound sockets and connects they share.
    outbound: Arc<crate::caps::tcp::RequestBudget>,
    /// The memory they share: their instances' and the host's copies of
    /// bodies and files passed between them.
    memory: Arc<MemoryPool>,
    started: AtomicU32,
}

impl TenantSubrequests {
    pub(crate) fn new(
        app: Arc<App>,
        tenant: Arc<Tenant>,
        parent: &Request,
        log: RequestLog,
    ) -> Arc<TenantSubrequests> {
        let parent = Request {
            body: Vec::new(),
            headers: Vec::new(),
            ..parent.clone()
        };
        Arc::new(TenantSubrequests {
            fuel: Arc::new(FuelPool::new(tenant.limits.sandbox.fuel)),
            outbound: Arc::default(),
            memory: Arc::new(MemoryPool::new(tenant.limits.sandbox.memory_bytes)),
            app,
            tenant,
            parent,
            log,
            started: AtomicU32::new(0),
        })
    }

    /// The fuel the request tree shares (the tenant's fuel limit, once).
    pub(crate) fn fuel_pool(&self) -> Arc<FuelPool> {
        self.fuel.clone()
    }

    /// The outbound budget the request tree shares.
    pub(crate) fn outbound(&self) -> Arc<crate::caps::tcp::RequestBudget> {
        self.outbound.clone()
    }

    /// The memory the request tree shares (the tenant's memory limit, once).
    pub(crate) fn memory_pool(&self) -> Arc<MemoryPool> {
        self.memory.clone()
    }

    /// Hold `bytes` of the tree's memory for a host copy, or say why not.
    fn reserve(&self, bytes: usize, what: &str) -> Result<Reservation, String> {
        self.memory.reserve(bytes).ok_or_else(|| {
            format!(
                "{what} of {bytes} bytes does not fit in the request's memory limit of {} MiB (the request and its subrequests together)",
                self.tenant.limits.sandbox.memory_bytes >> 20
            )
        })
    }

    /// The request a script's subrequest stands for: every byte the guest
    /// sent checked (UTF-8 where the request needs text, the headers
    /// bounded in count and bytes before they are built).
    fn request_of(&self, sub: Subrequest) -> Result<Request, String> {
        let method = std::str::from_utf8(&sub.method)
            .ok()
            .filter(|method| {
                matches!(
                    *method,
                    "GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "OPTIONS" | "PATCH"
                ) || method.bytes().all(|b| b.is_ascii_uppercase())
            })
            .ok_or_else(|| format!("invalid method {:?}", String::from_utf8_lossy(&sub.method)))?;
        let path = std::str::from_utf8(&sub.uri).map_err(|_| {
            format!(
                "uri {:?}: not valid UTF-8",
                String::from_utf8_lossy(&sub.uri)
            )
        })?;
        let uri = normalize_path(path).map_err(|e| format!("uri {path:?}: {e}"))?;
        let args = std::str::from_utf8(&sub.args)
            .ok()
            .filter(|args| {
                !args
                    .bytes()
                    .any(|b| b.is_ascii_control() || b == b' ' || b == b'#')
            })
            .ok_or_else(|| format!("invalid args {:?}", String::from_utf8_lossy(&sub.args)))?;
        let headers = headers_of(&sub.headers)?;
        let request_uri = if args.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{args}")
        };
        Ok(Request {
            method: method.to_string(),
            uri,
            request_uri,
            query: args.to_string(),
            headers,
            body: sub.body,
            ..self.parent.clone()
        })
    }

    /// Serve `sub` and account for it: one access-log line (marked as a
    /// subrequest, with its parent's request id) and its count and fuel in
    /// the tenant's metrics.
    async fn serve(self: Arc<Self>, sub: Subrequest, depth: u32) -> Captured {
        let started = std::time::Instant::now();
        // Guest text, as every such byte on its way to a log.
        let method = log_text::escape(&sub.method);
        let path = log_text::escape(&sub.uri);
        // A place among the tenant's subrequests in flight: a tenant's
        // subrequests wait for each other, never take other tenants' places.
        // The wait ends with the parent's deadline, which drops this future.
        let _place = self.tenant.admission.subrequest_place().await;
        let served = self.clone().run(sub, depth).await;
        let (status, outcome, fuel) = match &served {
            Ok((response, outcome, fuel, _)) => (response.status, outcome.as_str(), *fuel),
            Err(error) => {
                // The parent gets the error; the operator sees it too (it may
                // quote the guest's bytes, so escaped).
                tracing::warn!(
                    request_id = self.log.request_id,
                    "subrequest {method} {path} refused: {}",
                    log_text::escape(error.as_bytes())
                );
                (500, "subrequest-refused", 0)
            }
        };
        let tenant = &self.tenant;
        tenant.metrics.subrequest(status, outcome, fuel);
        tracing::info!(
            target: "access",
            request_id = self.log.request_id,
            tenant = tenant.name.as_str(),
            subrequest = depth,
            method,
            path,
            status,
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
            fuel,
            outcome,
            "{} {method} {path} {status} (subrequest)",
            tenant.name,
        );
        match served {
            Ok((response, _, _, held)) => Captured {
                response: Ok(response),
                held,
            },
            Err(error) => Captured {
                response: Err(error),
                held: None,
            },
        }
    }

    /// Route and run `sub`: its response, outcome label, fuel, and the
    /// memory its body holds.
    async fn run(
        self: Arc<Self>,
        sub: Subrequest,
        depth: u32,
    ) -> Result<(Subresponse, String, u64, Option<Reservation>), String> {
        // The body the parent passed is a host copy while the subrequest
        // runs.
        let _body = self.reserve(sub.body.len(), "a subrequest body")?;
        let request = self.request_of(sub)?;
        let route = self.tenant.router.route(&request.uri);
        let (scripts, shown_from, opened, proxy) = match route {
            Route::Scripts {
                scripts,
                shown_from,
                opened,
                proxy,
            } => (scripts, shown_from, opened, proxy),
            Route::Static(file) => {
                // Held from before the read until the parent collects it.
                let size = usize::try_from(file.metadata().len()).unwrap_or(usize::MAX);
                let size = size.min(static_files::MAX_STATIC_FILE_BYTES as usize);
                let held = self.reserve(size, "a static file")?;
                return Ok(match static_files::read_async(file).await {
                    StaticFile::Found { content_type, body } if body.len() <= size => (
                        Subresponse {
                            status: 200,
                            headers: vec![("Content-Type".into(), content_type.into_bytes())],
                            body: body.to_vec(),
                            truncated: false,
                        },
                        "static".into(),
                        0,
                        Some(held),
                    ),
                    _ => (not_found(), "not-found".into(), 0, None),
                });
            }
            Route::NotFound => return Ok((not_found(), "not-found".into(), 0, None)),
        };
        let handlers = self
            .app
            .handlers(&scripts, &shown_from, opened.as_ref())
            .await
            .map_err(|e| e.to_string())?;
        let log = (self.log).for_subrequest(String::from_utf8_lossy(&request.uri).into_owned());
        let caps = RequestCaps {
            grants: self.tenant.grants.clone(),
            subrequests: Some(self.clone()),
            depth,
            outbound: self.outbound.clone(),
            init: false,
            // A proxied location's subrequest proxies for the client too.
            proxy: proxy.map(|upstream| crate::caps::upstream::ProxyTarget {
                upstream,
                client: std::net::SocketAddr::new(
                    request
                        .remote_addr
                        .parse()
                        .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into()),
                    request.remote_port,
                ),
                scheme: if request.scheme == "https" {
                    "https"
                } else {
                    "http"
                },
            }),
        };
        let (report, sink) = self
            .app
            .sandbox
            .serve(ServeJob {
                request: &request,
                handlers: &handlers,
                limits: &self.tenant.limits.sandbox,
                sink: Box::new(CollectedResponse::default()),
                log,
                caps,
                // Its parent waits off the CPU meanwhile.
                cpu: self.tenant.admission.cpu_slots(&self.app.gates),
                guest: self.tenant.prepared.clone(),
                fuel_pool: Some(self.fuel.clone()),
                memory_pool: Some(self.memory.clone()),
            })
            .await
            .map_err(|e| format!("cannot run the subrequest: {e}"))?;
        let sink: Box<dyn std::any::Any> = sink;
        let Ok(response) = sink.downcast::<CollectedResponse>() else {
            unreachable!("serve_request returns the sink it was given")
        };
        let subresponse = Subresponse {
            status: response.status.unwrap_or(report.status),
            headers: response
                .headers
                .iter()
                .map(|(name, value)| (name.as_str().to_string(), value.as_bytes().to_vec()))
                .collect(),
            body: response.body,
            truncated: response.aborted,
        };
        if let super::HttpOutcome::LimitExceeded(limit) = &report.outcome {
            self.tenant.metrics.limit_hit(limit.kind());
        }
        let held = self.reserve(subresponse.body.len(), "a subrequest's response")?;
        Ok((
            subresponse,
            report.outcome.label(),
            report.fuel_used,
            Some(held),
        ))
    }
}

/// The headers of a subrequest's header block (wit/tasks.wit): bounded in
/// count and bytes before any is built, each name and value valid.
fn headers_of(block: &[u8]) -> Result<Vec<Header>, String> {
    let block = header_block::decode(block, MAX_SUBREQUEST_HEADERS, MAX_SUBREQUEST_HEADER_BYTES)
        .map_err(|e| match e {
            HeaderBlockError::TooMany { .. } => {
                format!("too many headers (at most {MAX_SUBREQUEST_HEADERS})")
            }
            HeaderBlockError::TooLarge { .. } => "too many header bytes".to_string(),
            malformed @ HeaderBlockError::Malformed { .. } => format!("headers: {malformed}"),
        })?;
    let mut headers = Vec::with_capacity(block.len());
    for (name, value) in block {
        // A valid header name is ASCII, so it is valid UTF-8 too.
        let valid = hyper::header::HeaderName::from_bytes(name).is_ok()
            && hyper::header::HeaderValue::from_bytes(value).is_ok();
        let name = std::str::from_utf8(name)
            .ok()
            .filter(|_| valid)
            .ok_or_else(|| format!("invalid header {:?}", String::from_utf8_lossy(name)))?;
        headers.push(Header {
            name: name.to_string(),
            value: value.to_vec(),
        });
    }
    Ok(headers)
}

fn not_found() -> Subresponse {
    Subresponse {
        status: 404,
        headers: Vec::new(),
        body: Vec::new(),
        truncated: false,
    }
}

impl Subrequests for TenantSubrequests {
    fn start(
        self: Arc<Self>,
        request: Subrequest,
        depth: u32,
    ) -> Result<Pin<Box<dyn Future<Output = Captured> + Send>>, String> {
        if depth > MAX_SUBREQUEST_DEPTH {
            return Err(format!(
                "subrequests nested too deep (at most {MAX_SUBREQUEST_DEPTH} levels)"
            ));
        }
        let started = self.started.fetch_add(1, Ordering::Relaxed);
        if started >= MAX_SUBREQUESTS {
            return Err(format!(
                "too many subrequests (at most {MAX_SUBREQUESTS} per request, all levels together)"
            ));
        }
        Ok(Box::pin(self.serve(request, depth)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(headers: &[(&[u8], &[u8])]) -> Vec<u8> {
        header_block::encode(headers.iter().copied())
    }

    #[test]
    fn subrequest_headers_are_bounded_and_checked() {
        let headers = headers_of(&block(&[(b"X-A", b"1"), (b"x-b", b"")])).unwrap();
        let names: Vec<&str> = headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["X-A", "x-b"]);
        let many = vec![(&b"X"[..], &b"v"[..]); MAX_SUBREQUEST_HEADERS + 1];
        assert_eq!(
            headers_of(&block(&many)).unwrap_err(),
            "too many headers (at most 1000)"
        );
        let big = vec![b'v'; MAX_SUBREQUEST_HEADER_BYTES];
        assert_eq!(
            headers_of(&block(&[(b"X", &big)])).unwrap_err(),
            "too many header bytes"
        );
        assert_eq!(
            headers_of(&block(&[(b"X\xff", b"v")])).unwrap_err(),
            "invalid header \"X\u{fffd}\""
        );
        assert_eq!(
            headers_of(&block(&[(b"X", b"a\nb")])).unwrap_err(),
            "invalid header \"X\""
        );
        // A modified guest's block: a value that claims 4 GiB.
        let mut aliased = block(&[(b"X", b"v")]);
        aliased.extend_from_slice(&[1, 0, 0, 0, b'Y', 0xff, 0xff, 0xff, 0xff, b'v']);
        assert_eq!(
            headers_of(&aliased).unwrap_err(),
            "headers: malformed header block: header 1's value at byte 15: its length runs past the end of the block"
        );
    }
}
