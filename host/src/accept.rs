//! Serving the connections of a TCP listener with hyper, whatever they are
//! for: at most so many at once (more wait before being accepted) and so
//! many from one client address (more are closed at once), a deadline to
//! send a request's head from the moment a connection is accepted (slow
//! clients: slowloris; clients that send nothing, or only the HTTP/2
//! preface), an idle timeout (HTTP/2 connections with no open stream,
//! HTTP/1 between requests), a send timeout (a client that stops taking a
//! response: its socket stays full), optional bounds on the head, and a
//! graceful shutdown that lets open connections finish for a while.
//!
//! It knows nothing of what it serves: the caller gives a hyper service per
//! connection. The scripts' server (`http::listener`) and the metrics
//! endpoint (`tenants::metrics`) both run on it, each with its own
//! [`Settings`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a TLS connection's handshake settled, for the requests on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.3` or `TLSv1.2` (nginx's `$ssl_protocol`).
    pub protocol: &'static str,
    /// The name the client asked for (SNI), lowercase, if it sent one.
    pub server_name: Option<String>,
}

impl TlsInfo {
    fn of(connection: &rustls::ServerConnection) -> TlsInfo {
        TlsInfo {
            protocol: match connection.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                _ => "TLS",
            },
            server_name: connection.server_name().map(str::to_ascii_lowercase),
        }
    }
}

/// How a listener serves its connections.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Connections served at once; more wait before being accepted.
    pub max_connections: usize,
    /// Connections served at once from one client IP address; more are
    /// closed as soon as they are accepted. `None`: no such cap.
    pub max_connections_per_client: Option<usize>,
    /// Time a client has to send a complete request head: the first from
    /// the moment its connection is accepted (HTTP/1 or HTTP/2, the
    /// protocol's detection included), each next HTTP/1 one from the end of
    /// the previous response.
    pub header_read_timeout: Duration,
    /// Time a connection that has had a request may have none in progress;
    /// then it is closed (gracefully: HTTP/2 sends GOAWAY).
    pub idle_timeout: Duration,
    /// Longest a write to the client may wait for room (its socket full:
    /// the client takes nothing), from the write that would block to one
    /// that makes progress; then the connection is closed. Between writes,
    /// not for a whole response (nginx's `send_timeout`).
    pub send_timeout: Duration,
    /// Bounds on a request's head; `None`: hyper's defaults.
    pub head_limits: Option<HeadLimits>,
    /// Whether HTTP/2 by prior knowledge (h2c) is served besides HTTP/1.1.
    pub http2: bool,
    /// TLS: every connection begins with a handshake under this config (its
    /// certificates, its ALPN protocols), within `header_read_timeout` of
    /// being accepted; `None`: plain TCP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Once shutdown begins, the time open connections get to finish.
    pub shutdown_grace: Duration,
    /// What becomes of the connections still open when the grace is over.
    pub after_grace: AfterGrace,
    /// Starts every log line (`"metrics: "`; empty for none).
    pub log_prefix: &'static str,
    /// How the shutdown is logged.
    pub shutdown_log: ShutdownLog,
}

/// Bounds on a request's head.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Header fields (HTTP/1).
    pub max_headers: usize,
    /// Bytes of the head: HTTP/1's read buffer (at least 8 KiB, hyper's
    /// minimum) and HTTP/2's header list.
    pub max_header_bytes: usize,
}

/// What becomes of the connections still open when the shutdown grace is
/// over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterGrace {
    /// Closed: [`serve`] aborts them and returns once they are gone.
    Close,
    /// Left to run on the runtime: [`serve`] returns without them (they end
    /// on their own, or with the runtime).
    Leave,
}

/// How the shutdown is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownLog {
    /// The draining, its end and an overrun grace (warning), at info level:
    /// a server's own shutdown.
    Info,
    /// Only an overrun grace, at debug level: a side listener.
    Debug,
}

/// Accept connections on `listener` and serve each in a tokio task of its
/// own with the service `make_service` gives for its remote address (and,
/// over TLS, what its handshake settled), until
/// `shutdown` completes; then stop accepting, close the listener, give open
/// connections `settings.shutdown_grace` to finish, and deal with the rest
/// as `settings.after_grace` says.
///
/// Each connection is held to its deadlines: a first request head within
/// `header_read_timeout` of being accepted (else it is closed), and, once
/// it has had a request, no longer than `idle_timeout` with none in
/// progress (else it is shut down gracefully, and closed if that takes
/// another `idle_timeout`); and a write to it that would block must make
/// progress within `send_timeout` (else it is closed, logged at info). A
/// client address already holding
/// `max_connections_per_client` has its next connection closed as soon as
/// it is accepted.
///
/// A failed accept (out of file descriptors and the like) is logged and
/// retried after 50 ms, not returned.
pub async fn serve<S, B>(
    listener: TcpListener,
    settings: &Settings,
    make_service: impl Fn(SocketAddr, Option<TlsInfo>) -> S + Send + Sync + 'static,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let prefix = settings.log_prefix;
    let builder = Arc::new(builder(settings));
    let make_service = Arc::new(make_service);
    let tls = settings.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let connections = Arc::new(Semaphore::new(settings.max_connections));
    let clients = Arc::new(Clients::new(settings.max_connections_per_client));
    let mut refusals = Refusals::default();
    // Tells the connections to shut down gracefully; each holds a receiver,
    // so it is closed once they are all gone.
    let (closing, _) = watch::channel(false);
    let deadlines = Deadlines {
        first_head: settings.header_read_timeout,
        idle: settings.idle_timeout,
        send: settings.send_timeout,
    };
    // The connections, when they are closed after the grace.
    let mut tasks = JoinSet::new();

    tokio::pin!(shutdown);
    loop {
        // Reap finished connections so that the set stays small.
        while tasks.try_join_next().is_some() {}
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: pause, do not spin.
                    tracing::warn!("{prefix}accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(client) = clients.enter(remote.ip()) else {
            // Closed at once, its permit given back.
            drop(stream);
            refusals.count(remote, settings.max_connections_per_client, prefix);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let accepted = Instant::now();
        let activity = Arc::new(Activity::new());
        let stream = Watched {
            inner: stream,
            activity: activity.clone(),
        };
        let closing = closing.subscribe();
        let (builder, make_service, tls) = (builder.clone(), make_service.clone(), tls.clone());
        let task = async move {
            let _permit = permit;
            let _client = client;
            let service = |info| Tracked {
                inner: make_service(remote, info),
                activity: activity.clone(),
            };
            let Some(tls) = tls else {
                let connection = builder
                    .serve_connection(TokioIo::new(stream), service(None))
                    .into_owned();
                drive(
                    connection, &activity, deadlines, accepted, closing, remote, prefix,
                )
                .await;
                return;
            };
            // The handshake is part of the time to send a first head.
            let handshake = tokio::time::timeout_at(
                (accepted + deadlines.first_head).into(),
                tls.accept(stream),
            );
            let stream = match handshake.await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%remote, "{prefix}TLS handshake failed: {error}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%remote, "{prefix}closed: no TLS handshake within {} ms", deadlines.first_head.as_millis());
                    return;
                }
            };
            let info = TlsInfo::of(stream.get_ref().1);
            let connection = builder
                .serve_connection(TokioIo::new(stream), service(Some(info)))
                .into_owned();
            drive(
                connection, &activity, deadlines, accepted, closing, remote, prefix,
            )
            .await;
        };
        match settings.after_grace {
            AfterGrace::Close => {
                tasks.spawn(task);
            }
            AfterGrace::Leave => {
                tokio::spawn(task);
            }
        }
    }
    drop(listener);

    let grace = settings.shutdown_grace;
    let log = settings.shutdown_log;
    if log == ShutdownLog::Info {
        tracing::info!(
            "{prefix}shutting down: draining {} connection(s)",
            closing.receiver_count()
        );
    }
    let _ = closing.send(true);
    tokio::select! {
        () = closing.closed() => if log == ShutdownLog::Info {
            tracing::info!("{prefix}all connections closed");
        },
        () = tokio::time::sleep(grace) => match log {
            ShutdownLog::Info => tracing::warn!(
                "{prefix}shutdown grace of {} ms over; closing the rest",
                grace.as_millis()
            ),
            ShutdownLog::Debug => tracing::debug!(
                "{prefix}shutdown grace over; closing {} connection(s)",
                tasks.len()
            ),
        },
    }
    tasks.shutdown().await;
    Ok(())
}

/// The deadlines [`drive`] holds a connection to.
#[derive(Debug, Clone, Copy)]
struct Deadlines {
    /// From the accept to the first request head.
    first_head: Duration,
    /// With no request in progress, once there has been one.
    idle: Duration,
    /// A write waiting for room in the client's socket.
    send: Duration,
}

/// Serve `connection` to its end, or until it misses a deadline: closed
/// when no request came within `deadlines.first_head`, or when a write has
/// waited `deadlines.send` for the client to take more; shut down
/// gracefully when idle for `deadlines.idle` (and closed if that takes as
/// long again) or when `closing` says the server shuts down.
async fn drive<C>(
    connection: C,
    activity: &Activity,
    deadlines: Deadlines,
    accepted: Instant,
    mut closing: watch::Receiver<bool>,
    remote: SocketAddr,
    prefix: &str,
) where
    C: Future<Output = Result<(), BoxError>> + Graceful,
{
    tokio::pin!(connection);
    let mut shutting_down = false;
    // When an idle connection was asked to shut down.
    let mut idle_since_shutdown: Option<Instant> = None;
    loop {
        let (requests, in_progress, idle_since) = activity.now();
        let deadline = match idle_since_shutdown {
            Some(asked) => Some(asked + deadlines.idle),
            None if requests == 0 => Some(accepted + deadlines.first_head),
            None if in_progress == 0 => Some(idle_since + deadlines.idle),
            None => None,
        };
        // Whichever is first, a waiting write's or the others'.
        let send_deadline = activity
            .write_waiting_since()
            .map(|since| since + deadlines.send);
        let first = match (deadline, send_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let expired = async {
            match first {
                Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(error) = ended {
                    tracing::debug!(%remote, "{prefix}connection ended: {error}");
                }
                return;
            }
            // An error: the server is gone; shut down all the same.
            _ = closing.wait_for(|closing| *closing), if !shutting_down => {
                shutting_down = true;
                connection.as_mut().graceful_shutdown();
            }
            () = activity.changed.notified() => {}
            () = expired => {
                if activity
                    .write_waiting_since()
                    .is_some_and(|since| since.elapsed() >= deadlines.send)
                {
                    tracing::info!(%remote, "{prefix}closed: the client took nothing of its response for {} ms (send timeout)", deadlines.send.as_millis());
                    return;
                }
                // The send deadline it was, and the write got on since.
                if deadline.is_none_or(|deadline| Instant::now() < deadline) {
                    continue;
                }
                let (requests, in_progress, _) = activity.now();
                if idle_since_shutdown.is_some() {
                    tracing::debug!(%remote, "{prefix}closed: idle, and not done {} ms after being asked to shut down", deadlines.idle.as_millis());
                    return;
                }
                if requests == 0 {
                    tracing::debug!(%remote, "{prefix}closed: no request head within {} ms", deadlines.first_head.as_millis());
                    return;
                }
                if in_progress == 0 {
                    tracing::debug!(%remote, "{prefix}shutting down: idle for {} ms", deadlines.idle.as_millis());
                    idle_since_shutdown = Some(Instant::now());
                    if !shutting_down {
                        shutting_down = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }
}

/// A connection that can be asked to finish what it is doing and close.
trait Graceful {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> Graceful for auto::Connection<'static, TokioIo<I>, S, TokioExecutor>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        auto::Connection::graceful_shutdown(self);
    }
}

/// The requests of one connection: how many began, how many are in
/// progress (from the head's arrival to the end of the response body), and
/// since when none is; and since when a write to it waits for room.
struct Activity {
    state: Mutex<(u64, usize, Instant)>,
    /// Told of each change ([`Notify::notify_one`]: a change while the
    /// connection's task is busy is kept for its next wait).
    changed: Notify,
    /// When the connection began.
    created: Instant,
    /// When a write began to wait for room in the socket, in nanoseconds
    /// since `created` plus one; 0 while writes make progress. Only the
    /// connection's own task touches it (the socket is polled there).
    write_waiting: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        let created = Instant::now();
        Activity {
            state: Mutex::new((0, 0, created)),
            changed: Notify::new(),
            created,
            write_waiting: AtomicU64::new(0),
        }
    }

    fn now(&self) -> (u64, usize, Instant) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Since when a write waits for room in the socket, if one does.
    fn write_waiting_since(&self) -> Option<Instant> {
        match self.write_waiting.load(Ordering::Relaxed) {
            0 => None,
            nanos => Some(self.created + Duration::from_nanos(nanos - 1)),
        }
    }

    /// A write would block: the wait starts, unless one already runs (a
    /// retry that blocks again does not restart it).
    fn write_blocked(&self) {
        if self.write_waiting.load(Ordering::Relaxed) == 0 {
            let nanos = u64::try_from(self.created.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
            self.write_waiting.store(nanos + 1, Ordering::Relaxed);
            self.changed.notify_one();
        }
    }

    /// A write made progress: no wait runs.
    fn write_progressed(&self) {
        if self.write_waiting.load(Ordering::Relaxed) != 0 {
            self.write_waiting.store(0, Ordering::Relaxed);
        }
    }

    fn begin(self: &Arc<Self>) -> InProgress {
        {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.0 += 1;
            state.1 += 1;
        }
        self.changed.notify_one();
        InProgress(self.clone())
    }
}

/// A request in progress; its end when dropped (with its response body,
/// or with its response's future if that never completes).
struct InProgress(Arc<Activity>);

impl Drop for InProgress {
    fn drop(&mut self) {
        {
            let mut state = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
            state.1 -= 1;
            if state.1 == 0 {
                state.2 = Instant::now();
            }
        }
        self.0.changed.notify_one();
    }
}

/// A connection's service, counting its requests in progress.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

type TrackedFuture<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<TrackedBody<B>>, E>> + Send>>;

impl<S, B> Service<Request<Incoming>> for Tracked<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = TrackedFuture<B, S::Error>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let in_progress = self.activity.begin();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| TrackedBody {
                body,
                _in_progress: in_progress,
            }))
        })
    }
}

/// A response body; its request ends when it is dropped.
struct TrackedBody<B> {
    body: B,
    _in_progress: InProgress,
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A connection's socket, telling its [`Activity`] when a write would block
/// (the client takes nothing) and when one makes progress again.
struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Watched<T> {
    fn note(&self, written: &Poll<std::io::Result<usize>>) {
        match written {
            Poll::Pending => self.activity.write_blocked(),
            Poll::Ready(Ok(n)) if *n > 0 => self.activity.write_progressed(),
            Poll::Ready(_) => {}
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note(&written);
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The connections open from each client address, under a cap.
struct Clients {
    max: Option<usize>,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl Clients {
    fn new(max: Option<usize>) -> Self {
        Clients {
            max,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// A place for one more connection from `ip`, `None` if it holds the
    /// most it may.
    fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<ClientPlace> {
        let Some(max) = self.max else {
            return Some(ClientPlace(None));
        };
        // An IPv4 client seen through an IPv6 socket is the same client.
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(ClientPlace(Some((self.clone(), ip))))
    }
}

/// A connection's place among its client's; given back when dropped.
struct ClientPlace(Option<(Arc<Clients>, IpAddr)>);

impl Drop for ClientPlace {
    fn drop(&mut self) {
        if let Some((clients, ip)) = &self.0 {
            let mut open = clients.open.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(count) = open.get_mut(ip) {
                *count -= 1;
                if *count == 0 {
                    open.remove(ip);
                }
            }
        }
    }
}

/// Connections refused for their client's cap, logged at most once every
/// [`Refusals::LOG_EVERY`] with the count since the last line.
#[derive(Default)]
struct Refusals {
    unlogged: u64,
    logged_at: Option<Instant>,
}

impl Refusals {
    const LOG_EVERY: Duration = Duration::from_secs(10);

    fn count(&mut self, remote: SocketAddr, max: Option<usize>, prefix: &str) {
        self.unlogged += 1;
        if self
            .logged_at
            .is_none_or(|at| at.elapsed() >= Self::LOG_EVERY)
        {
            tracing::warn!(
                "{prefix}closed {} connection(s) at once: their client already had {} open (the last: {}; at most one such line every {} s)",
                self.unlogged,
                max.unwrap_or(0),
                remote.ip(),
                Self::LOG_EVERY.as_secs(),
            );
            self.unlogged = 0;
            self.logged_at = Some(Instant::now());
        }
    }
}

/// The hyper connection builder for `settings`.
fn builder(settings: &Settings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if !settings.http2 {
        builder = builder.http1_only();
    }
    let mut http1 = builder.http1();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .keep_alive(true);
    if let Some(heads) = settings.head_limits {
        http1
            .max_headers(heads.max_headers)
            .max_buf_size(heads.max_header_bytes.max(8192));
    }
    if settings.http2 {
        let mut http2 = builder.http2();
        http2.timer(TokioTimer::new());
        if let Some(heads) = settings.head_limits {
            http2.max_header_list_size(u32::try_from(heads.max_header_bytes).unwrap_or(u32::MAX));
        }
    }
    builder
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::Full;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    /// A server of one connection at a time, with a short grace, whose
    /// `/hang` never answers; and what stops it.
    async fn start(
        after_grace: AfterGrace,
    ) -> (
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let settings = Settings {
            max_connections: 1,
            max_connections_per_client: None,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(10),
            head_limits: None,
            http2: false,
            tls: None,
            shutdown_grace: Duration::from_millis(200),
            after_grace,
            log_prefix: "test: ",
            shutdown_log: ShutdownLog::Debug,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let service = |_remote, _tls| {
                hyper::service::service_fn(|request: Request<Incoming>| async move {
                    if request.uri().path() == "/hang" {
                        std::future::pending::<()>().await;
                    }
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hi"))))
                })
            };
            serve(listener, &settings, service, async {
                let _ = stopped.await;
            })
            .await
        });
        (addr, stop, server)
    }

    async fn send(addr: SocketAddr, path: &str) -> TcpStream {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        stream
    }

    /// Whether `stream` says anything (or closes) within `wait`.
    async fn answers_within(stream: &mut TcpStream, wait: Duration) -> bool {
        let mut byte = [0u8; 1];
        tokio::time::timeout(wait, stream.read(&mut byte))
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_wait_to_be_served() {
        let (addr, stop, server) = start(AfterGrace::Close).await;
        let mut first = send(addr, "/").await;
        assert!(answers_within(&mut first, Duration::from_secs(5)).await);
        // The first connection stays open (keep-alive) and holds the only
        // slot: the second is not served meanwhile.
        let mut second = send(addr, "/").await;
        assert!(!answers_within(&mut second, Duration::from_millis(300)).await);
        drop(first);
        assert!(answers_within(&mut second, Duration::from_secs(5)).await);
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn after_the_grace_connections_are_closed_or_left() {
        for (after_grace, closed) in [(AfterGrace::Close, true), (AfterGrace::Leave, false)] {
            let (addr, stop, server) = start(after_grace).await;
            let mut hanging = send(addr, "/hang").await;
            assert!(!answers_within(&mut hanging, Duration::from_millis(100)).await);
            stop.send(()).unwrap();
            tokio::time::timeout(Duration::from_secs(5), server)
                .await
                .expect("serve returns once the grace is over")
                .unwrap()
                .unwrap();
            assert!(TcpStream::connect(addr).await.is_err());
            assert_eq!(
                answers_within(&mut hanging, Duration::from_millis(300)).await,
                closed,
                "{after_grace:?}"
            );
        }
    }
}
