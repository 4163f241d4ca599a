//! The HTTP server: hyper on tokio, HTTP/1.1 with keep-alive and HTTP/2
//! (h2c, by prior knowledge), each script request in a fresh sandbox instance.
//!
//! Bounds, all in [`ServerSettings`]: connections (a semaphore, waiting
//! before accept), header bytes and count, the time to read a request's
//! headers (slow clients: slowloris), the request body (413), requests in
//! flight and runs on a CPU at once (requests beyond wait for a place; see
//! `tenants::admission`), and the grace period of a graceful shutdown,
//! which drains in-flight requests.

use crate::caps::RequestCaps;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::guest_api::{RequestLog, ResponseSink, SinkFuture};
use super::phases::{HttpOutcome, ServeJob};
use super::request::RequestHead;
use super::routing::{Route, Router};
use super::scripts::ScriptCache;
use super::static_files::{self, StaticFile};
use crate::sandbox::{EngineSettings, Limits, Sandbox};
use crate::tenants::admission::{AdmissionLimits, Admitted, Rejection, ServerGates};
use crate::tenants::metrics::Metrics;
use crate::tenants::policy::TenantLimits;
use crate::tenants::{Registry, Tenant, TenantSet};

/// Limits of the server itself (those of each script run are [`Limits`]).
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub max_connections: usize,
    pub max_request_body_bytes: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub header_read_timeout: Duration,
    pub shutdown_grace: Duration,
    /// Runs executing guest code at once, across all tenants; a run that
    /// waits on I/O gives its slot back (default: twice the cores, see
    /// [`default_max_running`]).
    pub max_running: usize,
    /// Requests in flight (admitted, running or waiting on I/O) at once,
    /// across all tenants: each holds an instance (default: sized from the
    /// machine's memory, [`EngineSettings::default_max_in_flight`]).
    pub max_in_flight: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            max_connections: 1024,
            max_request_body_bytes: 1024 * 1024,
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            header_read_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
            max_running: default_max_running(),
            max_in_flight: EngineSettings::default_max_in_flight(),
        }
    }
}

impl ServerSettings {
    /// Instances the engine's pool needs for these settings: one for each
    /// request in flight, and room for the runs that are not requests of
    /// their own (compiles of new scripts, log phases after a limit,
    /// subrequests).
    pub fn instance_pool_size(&self) -> u32 {
        u32::try_from(self.max_in_flight + self.max_running + 8).unwrap_or(u32::MAX)
    }
}

/// Runs on a CPU at once by default: twice the cores. Guest code is CPU
/// work; running more of it than the cores can serve only spreads the CPU
/// thinner, and a request's wall-clock deadline runs meanwhile. Requests
/// beyond this wait in the queue, where their deadline has not started yet;
/// runs waiting on I/O hold no slot.
pub fn default_max_running() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() * 2)
        .unwrap_or(4)
}

/// Everything a request needs, shared by all connections.
pub struct App {
    pub sandbox: Arc<Sandbox>,
    /// The tenants (one, `default`, for a single site), swapped by reloads.
    pub registry: Arc<Registry>,
    pub settings: ServerSettings,
    /// Scripts in memory, shared by all tenants (keyed by real path).
    pub scripts: ScriptCache,
    /// The server's bounds on requests in flight and runs on a CPU.
    pub(crate) gates: ServerGates,
    next_request_id: AtomicU64,
}

impl App {
    /// A server of one site: `router` for every host, under `limits`.
    pub fn new(
        sandbox: Arc<Sandbox>,
        router: Router,
        limits: Limits,
        settings: ServerSettings,
    ) -> Arc<Self> {
        let tenant_limits = TenantLimits {
            sandbox: limits,
            max_request_body_bytes: settings.max_request_body_bytes,
            // One site: no rate limit and no queue bound of its own; the
            // server's bounds are its own.
            admission: AdmissionLimits {
                max_concurrency: settings.max_running,
                max_in_flight: settings.max_in_flight,
                max_queue: usize::MAX,
                queue_timeout: Duration::from_secs(24 * 3600),
                requests_per_second: None,
                burst: 1,
            },
        };
        let metrics = Metrics::new();
        let tenant = Tenant::single_site(router, tenant_limits, &metrics);
        let registry = Registry::single(TenantSet::single(tenant), metrics);
        Self::with_registry(sandbox, Arc::new(registry), settings)
    }

    /// A server of the tenants in `registry`.
    pub fn with_registry(
        sandbox: Arc<Sandbox>,
        registry: Arc<Registry>,
        settings: ServerSettings,
    ) -> Arc<Self> {
        let gates = ServerGates::new(settings.max_in_flight, settings.max_running);
        Arc::new(App {
            sandbox,
            registry,
            settings,
            scripts: ScriptCache::default(),
            gates,
            next_request_id: AtomicU64::new(1),
        })
    }
}

type ResponseBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// Accept and serve connections until `shutdown` completes, then stop
/// accepting and give in-flight requests `shutdown_grace` to finish.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    let connections = Arc::new(Semaphore::new(app.settings.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(app.settings.header_read_timeout)
        .max_headers(app.settings.max_headers)
        .max_buf_size(app.settings.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(app.settings.max_header_bytes).unwrap_or(u32::MAX));

    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: pause, do not spin.
                    tracing::warn!("accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |request| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(handle(app, request, remote, local).await) }
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(error) = connection.await {
                tracing::debug!(%remote, "connection ended: {error}");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: draining {} connection(s)", graceful.count());
    let grace = app.settings.shutdown_grace;
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => tracing::warn!("shutdown grace of {} ms over; closing the rest", grace.as_millis()),
    }
    Ok(())
}

fn full(body: impl Into<Bytes>) -> ResponseBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A response of the host's own: an nginx-like page for `status`.
fn simple(status: StatusCode) -> Response<ResponseBody> {
    let reason = status.canonical_reason().unwrap_or("");
    let code = status.as_u16();
    let page = format!(
        "<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n<center><h1>{code} {reason}</h1></center>\r\n<hr><center>moonwall</center>\r\n</body>\r\n</html>\r\n"
    );
    let mut response = Response::new(full(page));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/html"),
    );
    headers.insert(hyper::header::SERVER, HeaderValue::from_static("moonwall"));
    response
}

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

async fn handle(
    app: Arc<App>,
    request: Request<Incoming>,
    remote: SocketAddr,
    local: SocketAddr,
) -> Response<ResponseBody> {
    let id = app.next_request_id.fetch_add(1, Ordering::Relaxed);
    let (parts, body) = request.into_parts();
    // The tenant set of this moment serves the request to its end, whatever
    // reloads happen meanwhile.
    let tenants = app.registry.current();
    let authority = parts.uri.authority().map(|a| a.as_str()).or_else(|| {
        parts
            .headers
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
    });
    let tenant = tenants.for_host(authority).cloned();
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
            let read = tokio::task::spawn_blocking(move || static_files::read(&file)).await;
            match read {
                Ok(StaticFile::Found { content_type, body }) => {
                    let mut response = Response::new(full(body));
                    let headers = response.headers_mut();
                    if let Ok(value) = HeaderValue::from_str(&content_type) {
                        headers.insert(hyper::header::CONTENT_TYPE, value);
                    }
                    headers.insert(hyper::header::SERVER, HeaderValue::from_static("moonwall"));
                    access.host(response, "static")
                }
                Ok(StaticFile::TooLarge) => {
                    access.host(simple(StatusCode::FORBIDDEN), "static-too-large")
                }
                _ => access.host(simple(StatusCode::NOT_FOUND), "not-found"),
            }
        }
        Route::Scripts {
            scripts,
            shown_from,
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
            let body = match Limited::new(body, max_body).collect().await {
                Ok(collected) => collected.to_bytes().to_vec(),
                Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                    tenant.metrics.limit_hit("body");
                    return access.host(simple(StatusCode::PAYLOAD_TOO_LARGE), "body-too-large");
                }
                Err(_) => return access.host(simple(StatusCode::BAD_REQUEST), "bad-body"),
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
            let handlers = match app.scripts.load(&app.sandbox, &scripts, &shown_from).await {
                Ok(handlers) => handlers,
                Err(error) => {
                    tracing::error!(request_id = id, "{error}");
                    return access.host(
                        simple(StatusCode::INTERNAL_SERVER_ERROR),
                        "script-unreadable",
                    );
                }
            };
            let request = head.into_request(body, "http", local, remote);
            run_script(&app, request, handlers, access, admitted).await
        }
    }
}

/// The answer to a request its tenant's admission refused.
fn rejected(rejection: Rejection) -> Response<ResponseBody> {
    let status =
        StatusCode::from_u16(rejection.status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let mut response = simple(status);
    response.headers_mut().insert(
        hyper::header::RETRY_AFTER,
        rejection.retry_after_secs().into(),
    );
    response
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
    access: Access,
    admitted: Admitted,
) -> Response<ResponseBody> {
    let (head_tx, mut head_rx) = oneshot::channel();
    let (body_tx, body_rx) = mpsc::channel(16);
    let sink = ChannelSink {
        head: Some(head_tx),
        pending: None,
        first: None,
        coalesce: request.method != "HEAD",
        body: body_tx,
    };
    let tenant = access
        .tenant
        .clone()
        .expect("scripts run only for a tenant");
    let log = RequestLog::new(access.id, access.path.clone())
        .with_max_level(tenant.capabilities.log_level);
    let app = app.clone();
    let subrequests = super::subrequests::TenantSubrequests::new(
        app.clone(),
        tenant.clone(),
        &request,
        access.id,
    );
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
                },
                cpu,
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

/// A response's status and headers.
type Head = (u16, Vec<(HeaderName, HeaderValue)>);

/// The guest's response, from its run to the connection.
///
/// The head waits for the first chunk of the body: if the run ends with the
/// body in that one chunk (the common case: the guest buffers up to 16 KiB
/// unless the script flushes), the response goes out whole, with a
/// `Content-Length`, in one write; otherwise it streams, chunk by chunk.
struct ChannelSink {
    head: Option<oneshot::Sender<(Head, Option<Bytes>)>>,
    /// The head, not yet passed on.
    pending: Option<Head>,
    /// The first chunk of the body, not yet passed on.
    first: Option<Bytes>,
    /// Whether a whole response may be sent with a length (not for HEAD).
    coalesce: bool,
    body: mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>,
}

impl ChannelSink {
    /// Pass the head on, and the held chunk into the stream.
    fn start_streaming(&mut self) -> bool {
        if let (Some(head), Some(sender)) = (self.pending.take(), self.head.take()) {
            let _ = sender.send((head, None));
        }
        match self.first.take() {
            // The channel is empty here (nothing was streamed yet), so the
            // first chunk always fits.
            Some(chunk) => self.body.try_send(Ok(Frame::data(chunk))).is_ok(),
            None => true,
        }
    }
}

impl ResponseSink for ChannelSink {
    fn send_head(&mut self, status: u16, headers: Vec<(HeaderName, HeaderValue)>) {
        // A status without a body is not held back.
        let bodiless = matches!(status, 100..=199 | 204 | 304);
        self.pending = Some((status, headers));
        if !self.coalesce || bodiless {
            self.start_streaming();
        }
    }

    fn write(&mut self, chunk: Bytes) -> SinkFuture<'_, bool> {
        Box::pin(async move {
            if self.pending.is_some() && self.first.is_none() {
                self.first = Some(chunk);
                return true;
            }
            if !self.start_streaming() {
                return false;
            }
            // Waits while the client is slow to read: backpressure on the script.
            self.body.send(Ok(Frame::data(chunk))).await.is_ok()
        })
    }

    fn flush(&mut self) {
        self.start_streaming();
    }

    fn abort(&mut self) -> SinkFuture<'_, ()> {
        Box::pin(async move {
            self.start_streaming();
            // hyper drops what it has not yet flushed when a body fails: let
            // it take (and send) what was written before the error reaches it.
            let deadline = Instant::now() + Duration::from_millis(200);
            while self.body.capacity() < self.body.max_capacity() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
            let cut = std::io::Error::other("the response was cut short");
            let _ = self.body.send(Err(cut)).await;
        })
    }
}

impl Drop for ChannelSink {
    /// The run is over: a response still held goes out whole.
    fn drop(&mut self) {
        if let (Some(head), Some(sender)) = (self.pending.take(), self.head.take()) {
            let body = self.first.take().unwrap_or_default();
            let _ = sender.send((head, Some(body)));
        }
    }
}

struct ChannelBody(mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx)
    }
}
