//! Accepting connections: hyper on tokio (HTTP/1.1 with keep-alive, and
//! HTTP/2 by prior knowledge), bounded in connections, head size and count,
//! the time to send a head and the time a client may take nothing of a
//! response, with a graceful shutdown that drains the
//! requests in flight. The accept loop is [`crate::accept`]'s, shared with
//! the metrics endpoint; this is the scripts' server's use of it, with the
//! bounds of its [`ServerSettings`](super::app::ServerSettings). Every
//! request goes to [`super::dispatch`].

use std::convert::Infallible;
use std::sync::Arc;

use tokio::net::TcpListener;

use super::app::{App, ServerSettings};
use super::dispatch::handle;
use crate::accept::{self, AfterGrace, HeadLimits, ShutdownLog};

/// Accept and serve connections until `shutdown` completes, then stop
/// accepting and give in-flight requests `shutdown_grace` to finish.
/// Connections still open after that are left to end on their own (or with
/// the runtime). With `tls`, every connection is HTTPS
/// ([`super::tls::server_config`]).
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    let mut settings = accept_settings(&app.settings);
    settings.tls = tls;
    accept::serve(
        listener,
        &settings,
        move |remote, tls| {
            let app = app.clone();
            let connection = Arc::new(Connection { remote, local, tls });
            hyper::service::service_fn(move |request| {
                let app = app.clone();
                let connection = connection.clone();
                async move { Ok::<_, Infallible>(handle(app, request, &connection).await) }
            })
        },
        shutdown,
    )
    .await
}

/// The connection a request came on.
#[derive(Debug)]
pub(crate) struct Connection {
    pub remote: std::net::SocketAddr,
    pub local: std::net::SocketAddr,
    /// Over TLS: what the handshake settled.
    pub tls: Option<accept::TlsInfo>,
}

/// How the scripts' server accepts: its bounds, HTTP/2 too, its shutdown
/// logged.
fn accept_settings(settings: &ServerSettings) -> accept::Settings {
    accept::Settings {
        max_connections: settings.max_connections,
        max_connections_per_client: Some(settings.max_connections_per_client),
        header_read_timeout: settings.header_read_timeout,
        idle_timeout: settings.idle_timeout,
        send_timeout: settings.send_timeout,
        head_limits: Some(HeadLimits {
            max_headers: settings.max_headers,
            max_header_bytes: settings.max_header_bytes,
        }),
        http2: true,
        tls: None,
        shutdown_grace: settings.shutdown_grace,
        after_grace: AfterGrace::Leave,
        log_prefix: "",
        shutdown_log: ShutdownLog::Info,
    }
}
