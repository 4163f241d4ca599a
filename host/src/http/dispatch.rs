//! One request, from its head to its response: the tenant by host name,
//! the path, the route (a static file, or the phase scripts), the tenant's
//! admission, the scripts from memory, and the run. The access log and the
//! tenant's counters, for every request.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use hyper::header::HeaderValue;
use hyper::{Request, Response, StatusCode};
use tokio::sync::{mpsc, oneshot};

use super::app::App;
use super::body::{BodyBounds, BodyError};
use super::phases::{HttpOutcome, ServeJob};
use super::request::RequestHead;
use super::response::{ChannelBody, ChannelSink, ResponseBody, full, rejected, simple};
use super::static_files::{self, StaticFile};
use crate::caps::RequestCaps;
use crate::caps::http::RequestLog;
use crate::caps::upstream::ProxyTarget;
use crate::site::routing::Route;
use crate::tenants::Tenant;
use crate::tenants::admission::Admitted;

/// One access-log line per request, and its count in the tenant's metrics.
struct Access {
    id: u64,
    tenant: Option<Arc<Tenant>>,
    method: String,
    path: String,
    remote: SocketAddr,
    started: Instant,
}

impl Access {
    fn log(&self, status: u16, bytes: u64, fuel: u64, peak_memory: usize, outcome: &str) {
        let tenant = self.tenant.as_deref().map_or("-", |t| t.name.as_str());
        if let Some(tenant) = &self.tenant {
            tenant
                .metrics
                .request(status, outcome, fuel, self.started.elapsed());
        }
        tracing::info!(
            target: "access",
            request_id = self.id,
            tenant,
            remote = %self.remote,
            method = self.method,
            path = self.path,
            status,
            bytes,
            duration_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            fuel,
            peak_memory_kib = peak_memory / 1024,
            outcome,
            "{tenant} {} {} {status}",
            self.method,
            self.path,
        );
    }

    /// A response the host answers without running a script.
    fn host(&self, response: Response<ResponseBody>, outcome: &str) -> Response<ResponseBody> {
        let bytes = response.body().size_hint().exact().unwrap_or(0);
        self.log(response.status().as_u16(), bytes, 0, 0, outcome);
        response
    }
}

pub(crate) async fn handle(
    app: Arc<App>,
    request: Request<Incoming>,
    connection: &super::listener::Connection,
) -> Response<ResponseBody> {
    let remote = connection.remote;
    let id = app.next_request_id();
    let (parts, body) = request.into_parts();
    // The tenant set of this moment serves the request to its end, whatever
    // reloads happen meanwhile.
    let tenants = app.registry.current();
    let tenant = tenants.for_host(super::request::authority(&parts)).cloned();
    let access = Access {
        id,
        tenant: tenant.clone(),
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        remote,
        started: Instant::now(),
    };
    let Some(tenant) = tenant else {
        return access.host(simple(StatusCode::NOT_FOUND), "unknown-host");
    };

    let head = match RequestHead::from_parts(&parts) {
        Ok(head) => head,
        Err(error) => {
            tracing::info!(request_id = id, "bad request path: {error}");
            return access.host(simple(StatusCode::BAD_REQUEST), "bad-path");
        }
    };
    match tenant.router.route(&head.uri) {
        Route::NotFound => access.host(simple(StatusCode::NOT_FOUND), "not-found"),
        Route::Static(file) => {
            if parts.method != hyper::Method::GET && parts.method != hyper::Method::HEAD {
                return access.host(simple(StatusCode::METHOD_NOT_ALLOWED), "static");
            }
            match static_files::read_async(file).await {
                StaticFile::Found { content_type, body } => {
                    let mut response = Response::new(full(body));
                    let headers = response.headers_mut();
                    if let Ok(value) = HeaderValue::from_str(&content_type) {
                        headers.insert(hyper::header::CONTENT_TYPE, value);
                    }
                    headers.insert(hyper::header::SERVER, HeaderValue::from_static("moonwall"));
                    access.host(response, "static")
                }
                StaticFile::TooLarge => {
                    access.host(simple(StatusCode::FORBIDDEN), "static-too-large")
                }
                _ => access.host(simple(StatusCode::NOT_FOUND), "not-found"),
            }
        }
        Route::Scripts {
            scripts,
            shown_from,
            opened,
            proxy,
        } => {
            if let Err(rejection) = tenant.admission.check_rate() {
                return access.host(rejected(rejection), rejection.label());
            }
            let max_body = tenant.limits.max_request_body_bytes;
            let declared = parts
                .headers
                .get(hyper::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|length| length > max_body as u64) {
                tenant.metrics.limit_hit("body");
                return access.host(simple(StatusCode::PAYLOAD_TOO_LARGE), "body-too-large");
            }
            let bounds = BodyBounds {
                max_bytes: max_body,
                timeout: app.settings.body_timeout,
                min_bytes_per_sec: app.settings.min_body_bytes_per_sec,
            };
            let body = match super::body::read(body, bounds).await {
                Ok(body) => body,
                Err(BodyError::TooLarge) => {
                    tenant.metrics.limit_hit("body");
                    return access.host(simple(StatusCode::PAYLOAD_TOO_LARGE), "body-too-large");
                }
                Err(BodyError::TimedOut) => {
                    // The rest of the body is not awaited: the connection
                    // closes (an HTTP/2 stream is reset).
                    let mut response = simple(StatusCode::REQUEST_TIMEOUT);
                    if parts.version < hyper::Version::HTTP_2 {
                        response
                            .headers_mut()
                            .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    return access.host(response, "body-timeout");
                }
                Err(BodyError::Broken) => {
                    return access.host(simple(StatusCode::BAD_REQUEST), "bad-body");
                }
            };
            // A place in flight and a CPU slot, the tenant's and the server's.
            let metrics = tenant.metrics.clone();
            let admitted = match tenant
                .admission
                .admit(&app.gates, |delta| metrics.queued(delta))
                .await
            {
                Ok(admitted) => admitted,
                Err(rejection) => return access.host(rejected(rejection), rejection.label()),
            };
            let handlers = match app.handlers(&scripts, &shown_from, opened.as_ref()).await {
                Ok(handlers) => handlers,
                Err(error) => {
                    tracing::error!(request_id = id, "{error}");
                    return access.host(
                        simple(StatusCode::INTERNAL_SERVER_ERROR),
                        "script-unreadable",
                    );
                }
            };
            let request =
                head.into_request(body, connection.local, remote, connection.tls.as_ref());
            let proxy = proxy.map(|upstream| ProxyTarget {
                upstream,
                client: remote,
                scheme: if connection.tls.is_some() {
                    "https"
                } else {
                    "http"
                },
            });
            run_script(&app, request, handlers, proxy, access, admitted).await
        }
    }
}

/// Run the scripts, the response streaming back through a channel as the
/// guest writes it. The run starts in the connection's own task: a response
/// the guest writes whole (the common case) goes out with no other task or
/// wake-up involved. Once the guest sends its head and goes on (it streams,
/// or waits with the head sent), the rest of the run moves to a task of its
/// own, so the connection can send what is written meanwhile. Guest code
/// yields at every epoch tick, so runs share the runtime's workers fairly.
/// The places in flight are held until the run ends.
async fn run_script(
    app: &Arc<App>,
    request: super::Request,
    handlers: super::Handlers,
    proxy: Option<ProxyTarget>,
    access: Access,
    admitted: Admitted,
) -> Response<ResponseBody> {
    let (head_tx, mut head_rx) = oneshot::channel();
    let (body_tx, body_rx) = mpsc::channel(16);
    let sink = ChannelSink::new(head_tx, body_tx, request.method != "HEAD");
    let tenant = access
        .tenant
        .clone()
        .expect("scripts run only for a tenant");
    let log = RequestLog::new(access.id, access.path.clone())
        .with_max_level(tenant.capabilities.http.log_level);
    let app = app.clone();
    let subrequests = super::subrequests::TenantSubrequests::new(
        app.clone(),
        tenant.clone(),
        &request,
        log.clone(),
    );
    let fuel_pool = Some(subrequests.fuel_pool());
    let outbound = subrequests.outbound();
    let memory_pool = Some(subrequests.memory_pool());
    let Admitted { in_flight, cpu, .. } = admitted;
    let mut run = RunToTheEnd(Some(Box::pin(async move {
        let _in_flight = in_flight;
        let running = &tenant.metrics;
        running.running(1);
        let served = app
            .sandbox
            .serve(ServeJob {
                request: &request,
                handlers: &handlers,
                limits: &tenant.limits.sandbox,
                sink: Box::new(sink),
                log,
                caps: RequestCaps {
                    grants: tenant.grants.clone(),
                    subrequests: Some(subrequests),
                    depth: 0,
                    outbound,
                    init: false,
                    proxy,
                },
                cpu,
                guest: tenant.prepared.clone(),
                fuel_pool,
                memory_pool,
            })
            .await;
        running.running(-1);
        match served {
            Ok((report, _)) => {
                if let HttpOutcome::LimitExceeded(limit) = &report.outcome {
                    tenant.metrics.limit_hit(limit.kind());
                }
                access.log(
                    report.status,
                    report.body_bytes,
                    report.fuel_used,
                    report.peak_memory_bytes,
                    &report.outcome.label(),
                )
            }
            Err(error) => {
                tracing::error!(request_id = access.id, "cannot run the scripts: {error}");
                access.log(503, 0, 0, 0, "sandbox-unavailable");
            }
        }
    })));
    let head = {
        let running = run.0.as_mut().expect("the run is set above");
        tokio::select! {
            biased;
            head = &mut head_rx => Some(head),
            // The run ended: its response, if any, is in the channel whole.
            () = running => None,
        }
    };
    let head = match head {
        Some(head) => {
            // The head is out and the run goes on: in a task of its own.
            if let Some(rest) = run.0.take() {
                tokio::spawn(rest);
            }
            head
        }
        None => {
            run.0 = None;
            head_rx.await
        }
    };
    match head {
        Ok(((status, headers), whole)) => {
            let body = match whole {
                Some(body) => full(body),
                None => ChannelBody(body_rx).boxed(),
            };
            let mut response = Response::new(body);
            *response.status_mut() =
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let map = response.headers_mut();
            for (name, value) in headers {
                map.append(name, value);
            }
            response
        }
        // The run ended without any head: the sandbox could not run at all.
        Err(_) => simple(StatusCode::SERVICE_UNAVAILABLE),
    }
}

/// A run started in the connection's task. If the connection goes away
/// before the run ends (hyper drops the request's future), the rest of the
/// run moves to a task of its own: it still ends as every run does (its
/// log phase, its access-log line, its counters), never cut off midway.
struct RunToTheEnd(Option<Pin<Box<dyn Future<Output = ()> + Send>>>);

impl Drop for RunToTheEnd {
    fn drop(&mut self) {
        if let Some(rest) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(rest);
        }
    }
}
