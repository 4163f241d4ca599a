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

use crate::bindings::moonwall::sandbox::http_types::{Header, Request};
use crate::bindings::moonwall::sandbox::tasks::{Subrequest, Subresponse};
use crate::caps::RequestCaps;
use crate::caps::tasks::Subrequests;
use crate::sandbox::FuelPool;
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
/// Most header bytes a subrequest may carry.
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

    fn request_of(&self, sub: Subrequest) -> Result<Request, String> {
        if !matches!(
            sub.method.as_str(),
            "GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "OPTIONS" | "PATCH"
        ) && !sub.method.bytes().all(|b| b.is_ascii_uppercase())
        {
            return Err(format!("invalid method {:?}", sub.method));
        }
        let uri = normalize_path(&sub.uri).map_err(|e| format!("uri {:?}: {e}", sub.uri))?;
        if sub
            .args
            .bytes()
            .any(|b| b.is_ascii_control() || b == b' ' || b == b'#')
        {
            return Err(format!("invalid args {:?}", sub.args));
        }
        let mut header_bytes = 0;
        let mut headers = Vec::with_capacity(sub.headers.len());
        for (name, value) in sub.headers {
            header_bytes += name.len() + value.len();
            if header_bytes > MAX_SUBREQUEST_HEADER_BYTES {
                return Err("too many header bytes".into());
            }
            if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err()
                || hyper::header::HeaderValue::from_bytes(&value).is_err()
            {
                return Err(format!("invalid header {name:?}"));
            }
            headers.push(Header { name, value });
        }
        let request_uri = if sub.args.is_empty() {
            sub.uri.clone()
        } else {
            format!("{}?{}", sub.uri, sub.args)
        };
        Ok(Request {
            method: sub.method,
            uri,
            request_uri,
            query: sub.args,
            headers,
            body: sub.body,
            ..self.parent.clone()
        })
    }

    async fn serve(self: Arc<Self>, sub: Subrequest, depth: u32) -> Result<Subresponse, String> {
        let request = self.request_of(sub)?;
        let route = self.tenant.router.route(&request.uri);
        let (scripts, shown_from, opened) = match route {
            Route::Scripts {
                scripts,
                shown_from,
                opened,
            } => (scripts, shown_from, opened),
            Route::Static(file) => {
                return Ok(match static_files::read_async(file).await {
                    StaticFile::Found { content_type, body } => Subresponse {
                        status: 200,
                        headers: vec![("Content-Type".into(), content_type.into_bytes())],
                        body: body.to_vec(),
                        truncated: false,
                    },
                    _ => not_found(),
                });
            }
            Route::NotFound => return Ok(not_found()),
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
            })
            .await
            .map_err(|e| format!("cannot run the subrequest: {e}"))?;
        let sink: Box<dyn std::any::Any> = sink;
        let Ok(response) = sink.downcast::<CollectedResponse>() else {
            unreachable!("serve_request returns the sink it was given")
        };
        Ok(Subresponse {
            status: response.status.unwrap_or(report.status),
            headers: response
                .headers
                .iter()
                .map(|(name, value)| (name.as_str().to_string(), value.as_bytes().to_vec()))
                .collect(),
            body: response.body,
            truncated: response.aborted,
        })
    }
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
    ) -> Result<Pin<Box<dyn Future<Output = Result<Subresponse, String>> + Send>>, String> {
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
