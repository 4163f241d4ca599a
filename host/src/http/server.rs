//! The HTTP server: hyper on tokio, HTTP/1.1 with keep-alive and HTTP/2
//! (h2c, by prior knowledge), each script request in a fresh sandbox instance.
//!
//! In three pieces, one concern each:
//! - [`super::listener`]: connections (a semaphore, waiting before accept),
//!   header bytes and count, the time to read a request's headers (slow
//!   clients: slowloris), the graceful shutdown, which drains in-flight
//!   requests (the accept loop itself is [`crate::accept`]'s, which the
//!   metrics endpoint uses too);
//! - [`super::dispatch`]: one request: its tenant, route, admission (requests
//!   in flight and runs on a CPU, see `tenants::admission`), the request
//!   body (413), the run, the access log;
//! - [`super::response`]: the host's own pages and the guest's response on
//!   its way to the connection.
//!
//! The state they share is [`App`], with the server's own bounds in
//! [`ServerSettings`].

pub use super::app::{App, ServerSettings, default_max_running};
pub use super::listener::serve;

use std::net::SocketAddr;
use std::sync::Arc;

/// Why a server could not start: an address it could not listen on.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address}{}: {source}", if *.metrics { " for metrics" } else { "" })]
pub struct BindError {
    pub address: SocketAddr,
    /// The address was the metrics endpoint's.
    pub metrics: bool,
    pub source: std::io::Error,
}

impl BindError {
    fn tls(address: SocketAddr, error: rustls::Error) -> BindError {
        BindError {
            address,
            metrics: false,
            source: std::io::Error::other(format!("TLS: {error}")),
        }
    }
}

/// A running server: `app` served on every listen address, and the metrics
/// endpoint on its own, until [`Server::stop`]. `moonwall serve` and the
/// tests start it the same way.
pub struct Server {
    /// The addresses it listens on (port 0 resolved).
    pub addrs: Vec<SocketAddr>,
    /// The addresses it serves HTTPS on (`ServerSettings::tls_listen`).
    pub tls_addrs: Vec<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
    stop: tokio::sync::watch::Sender<bool>,
    servers: tokio::task::JoinSet<std::io::Result<()>>,
}

impl Server {
    /// Listen on every address of `listen` (and on `metrics_listen` for the
    /// metrics endpoint) and serve, on the current tokio runtime.
    pub async fn bind(
        app: Arc<App>,
        listen: &[SocketAddr],
        metrics_listen: Option<SocketAddr>,
    ) -> Result<Server, BindError> {
        let bind = |address: SocketAddr, metrics: bool| async move {
            tokio::net::TcpListener::bind(address)
                .await
                .map_err(|source| BindError {
                    address,
                    metrics,
                    source,
                })
        };
        let mut listeners = Vec::new();
        for &address in listen {
            listeners.push(bind(address, false).await?);
        }
        let tls_listen = app.settings.tls_listen.clone();
        let mut tls_listeners = Vec::new();
        for &address in &tls_listen {
            tls_listeners.push(bind(address, false).await?);
        }
        let tls_config = match tls_listen.first() {
            Some(&address) => Some(
                super::tls::server_config(super::tls::TenantCertificates::new(
                    app.registry.clone(),
                    app.settings.tls_default.clone(),
                ))
                .map_err(|error| BindError::tls(address, error))?,
            ),
            None => None,
        };
        let metrics_listener = match metrics_listen {
            Some(address) => Some(bind(address, true).await?),
            None => None,
        };
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let until_stopped = || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            }
        };
        let local = |listener: &tokio::net::TcpListener, wanted: SocketAddr| {
            listener.local_addr().unwrap_or(wanted)
        };
        let mut servers = tokio::task::JoinSet::new();
        let mut addrs = Vec::new();
        for (listener, &wanted) in listeners.into_iter().zip(listen) {
            let address = local(&listener, wanted);
            tracing::info!("moonwall listening on http://{address}");
            addrs.push(address);
            servers.spawn(serve(app.clone(), listener, None, until_stopped()));
        }
        let mut tls_addrs = Vec::new();
        for (listener, &wanted) in tls_listeners.into_iter().zip(&tls_listen) {
            let address = local(&listener, wanted);
            tracing::info!("moonwall listening on https://{address}");
            tls_addrs.push(address);
            servers.spawn(serve(
                app.clone(),
                listener,
                tls_config.clone(),
                until_stopped(),
            ));
        }
        let mut metrics_addr = None;
        if let (Some(listener), Some(wanted)) = (metrics_listener, metrics_listen) {
            let address = local(&listener, wanted);
            tracing::info!("metrics on http://{address}/metrics");
            metrics_addr = Some(address);
            servers.spawn(crate::tenants::metrics::serve(
                app.registry.metrics.clone(),
                listener,
                until_stopped(),
            ));
        }
        Ok(Server {
            addrs,
            tls_addrs,
            metrics_addr,
            stop,
            servers,
        })
    }

    /// Stop accepting, give requests in flight the shutdown grace, and wait
    /// for every listener to finish; the first error of any.
    pub async fn stop(mut self) -> std::io::Result<()> {
        let _ = self.stop.send(true);
        let mut outcome = Ok(());
        while let Some(result) = self.servers.join_next().await {
            let result = result.unwrap_or_else(|e| Err(std::io::Error::other(e)));
            if outcome.is_ok() {
                outcome = result;
            }
        }
        outcome
    }

    /// [`Server::bind`] on a tokio runtime of its own (with `workers`
    /// threads), on a thread of its own: for tests and embedding. Dropping
    /// the handle stops the server gracefully.
    pub fn spawn(
        app: Arc<App>,
        listen: &[SocketAddr],
        metrics_listen: Option<SocketAddr>,
        workers: usize,
    ) -> Result<ServerThread, BindError> {
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let listen = listen.to_vec();
        let thread = std::thread::spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers.max(1))
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(source) => {
                    let address = listen.first().copied().unwrap_or(([0, 0, 0, 0], 0).into());
                    let _ = started_tx.send(Err(BindError {
                        address,
                        metrics: false,
                        source,
                    }));
                    return Ok(());
                }
            };
            runtime.block_on(async move {
                let server = match Server::bind(app, &listen, metrics_listen).await {
                    Ok(server) => server,
                    Err(error) => {
                        let _ = started_tx.send(Err(error));
                        return Ok(());
                    }
                };
                let _ = started_tx.send(Ok((
                    server.addrs.clone(),
                    server.tls_addrs.clone(),
                    server.metrics_addr,
                )));
                let _ = stop_rx.await;
                server.stop().await
            })
        });
        match started_rx.recv() {
            Ok(Ok((addrs, tls_addrs, metrics_addr))) => Ok(ServerThread {
                addrs,
                tls_addrs,
                metrics_addr,
                stop: Some(stop_tx),
                thread: Some(thread),
            }),
            Ok(Err(error)) => {
                let _ = thread.join();
                Err(error)
            }
            Err(_) => {
                let outcome = thread.join();
                panic!("the server thread ended before it started: {outcome:?}")
            }
        }
    }
}

/// A [`Server`] on a thread of its own ([`Server::spawn`]).
pub struct ServerThread {
    pub addrs: Vec<SocketAddr>,
    pub tls_addrs: Vec<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl ServerThread {
    /// The first listen address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Stop gracefully and wait for the thread: what the server returned.
    pub fn stop(&mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the server thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
