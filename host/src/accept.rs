//! Serving the connections of a TCP listener with hyper, whatever they are
//! for: at most so many at once (more wait before being accepted), a
//! deadline to send a request's head (slow clients: slowloris), optional
//! bounds on the head, and a graceful shutdown that lets open connections
//! finish for a while.
//!
//! It knows nothing of what it serves: the caller gives a hyper service per
//! connection. The scripts' server (`http::listener`) and the metrics
//! endpoint (`tenants::metrics`) both run on it, each with its own
//! [`Settings`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How a listener serves its connections.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Connections served at once; more wait before being accepted.
    pub max_connections: usize,
    /// Time a client has to send a request's head (HTTP/1).
    pub header_read_timeout: Duration,
    /// Bounds on a request's head; `None`: hyper's defaults.
    pub head_limits: Option<HeadLimits>,
    /// Whether HTTP/2 by prior knowledge (h2c) is served besides HTTP/1.1.
    pub http2: bool,
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
/// own with the service `make_service` gives for its remote address, until
/// `shutdown` completes; then stop accepting, close the listener, give open
/// connections `settings.shutdown_grace` to finish, and deal with the rest
/// as `settings.after_grace` says.
///
/// A failed accept (out of file descriptors and the like) is logged and
/// retried after 50 ms, not returned.
pub async fn serve<S, B>(
    listener: TcpListener,
    settings: &Settings,
    mut make_service: impl FnMut(SocketAddr) -> S,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let prefix = settings.log_prefix;
    let builder = builder(settings);
    let connections = Arc::new(Semaphore::new(settings.max_connections));
    let graceful = GracefulShutdown::new();
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
        let _ = stream.set_nodelay(true);
        let connection = builder
            .serve_connection(TokioIo::new(stream), make_service(remote))
            .into_owned();
        let connection = graceful.watch(connection);
        let task = async move {
            let _permit = permit;
            if let Err(error) = connection.await {
                tracing::debug!(%remote, "{prefix}connection ended: {error}");
            }
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
            graceful.count()
        );
    }
    tokio::select! {
        () = graceful.shutdown() => if log == ShutdownLog::Info {
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
            header_read_timeout: Duration::from_secs(10),
            head_limits: None,
            http2: false,
            shutdown_grace: Duration::from_millis(200),
            after_grace,
            log_prefix: "test: ",
            shutdown_log: ShutdownLog::Debug,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let service = |_remote| {
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
