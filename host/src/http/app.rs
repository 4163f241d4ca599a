//! The state every request of a server shares ([`App`]: the sandbox, the
//! tenants, the scripts in memory, the server's bounds) and the server's own
//! settings ([`ServerSettings`]).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use super::Handlers;
use super::scripts::{PhaseScripts, ScriptCache, ScriptError};
use crate::runtime::{PreparedGuest, Sandbox};
use crate::sandbox::{EngineSettings, Limits};
use crate::site::limits::ConnectionLimit;
use crate::site::routing::{OpenFile, Router};
use crate::tenants::admission::{AdmissionLimits, ServerGates};
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
    /// Time to send a complete request head: the first from the moment the
    /// connection is accepted (protocol detection included), each next
    /// HTTP/1 one from the end of the previous response (`header_timeout_ms`).
    pub header_read_timeout: Duration,
    /// Time a connection that has had a request may have none in progress
    /// (`idle_timeout_ms`).
    pub idle_timeout: Duration,
    /// Longest wait for more of a request body (`body_timeout_ms`).
    pub body_timeout: Duration,
    /// Slowest average rate of a request body after its first
    /// `body_timeout` (`min_body_bytes_per_sec`).
    pub min_body_bytes_per_sec: u64,
    /// Connections open at once from one client address
    /// (`max_connections_per_client`).
    pub max_connections_per_client: usize,
    /// Longest a write to the client may wait for room, between two that
    /// make progress; then the connection is closed (`send_timeout_ms`).
    pub send_timeout: Duration,
    pub shutdown_grace: Duration,
    /// Runs executing guest code at once, across all tenants; a run that
    /// waits on I/O gives its slot back (default: twice the cores, see
    /// [`default_max_running`]).
    pub max_running: usize,
    /// Requests in flight (admitted, running or waiting on I/O) at once,
    /// across all tenants: each holds an instance (default: sized from the
    /// machine's memory, [`EngineSettings::default_max_in_flight`]).
    pub max_in_flight: usize,
    /// HTTPS listeners (besides the plain ones the server is bound to).
    pub tls_listen: Vec<std::net::SocketAddr>,
    /// The certificate HTTPS listeners serve when no tenant's fits the name
    /// asked for (a site's own certificate).
    pub tls_default: Option<crate::site::tls::Certificate>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        use crate::site::limits::ConnectionLimit as L;
        ServerSettings {
            max_connections: 1024,
            max_request_body_bytes: crate::site::limits::RequestLimit::MaxRequestBodyKib
                .def()
                .default_value()
                .map_or(usize::MAX, |kib| (kib as usize) << 10),
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            header_read_timeout: Duration::from_millis(L::HeaderTimeoutMs.default_value()),
            idle_timeout: Duration::from_millis(L::IdleTimeoutMs.default_value()),
            body_timeout: Duration::from_millis(L::BodyTimeoutMs.default_value()),
            min_body_bytes_per_sec: L::MinBodyBytesPerSec.default_value(),
            max_connections_per_client: L::MaxConnectionsPerClient.default_value() as usize,
            send_timeout: Duration::from_millis(L::SendTimeoutMs.default_value()),
            shutdown_grace: Duration::from_secs(10),
            max_running: default_max_running(),
            max_in_flight: EngineSettings::default_max_in_flight(),
            tls_listen: Vec::new(),
            tls_default: None,
        }
    }
}

impl ServerSettings {
    /// Set a bound on connections (a value in its range).
    pub fn set_connection_limit(&mut self, limit: ConnectionLimit, value: u64) {
        use ConnectionLimit as L;
        match limit {
            L::HeaderTimeoutMs => self.header_read_timeout = Duration::from_millis(value),
            L::IdleTimeoutMs => self.idle_timeout = Duration::from_millis(value),
            L::BodyTimeoutMs => self.body_timeout = Duration::from_millis(value),
            L::MinBodyBytesPerSec => self.min_body_bytes_per_sec = value,
            L::MaxConnectionsPerClient => {
                self.max_connections_per_client = usize::try_from(value).unwrap_or(usize::MAX)
            }
            L::SendTimeoutMs => self.send_timeout = Duration::from_millis(value),
        }
    }

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
        Self::single_site(sandbox, router, limits, settings, None)
    }

    /// [`App::new`], with every request starting from `prepared` (the state
    /// the site's init script left, [`crate::tenants::prepare_init`]).
    pub fn single_site(
        sandbox: Arc<Sandbox>,
        router: Router,
        limits: Limits,
        settings: ServerSettings,
        prepared: Option<Arc<PreparedGuest>>,
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
        let tenant = Tenant::single_site(router, tenant_limits, &metrics).with_prepared(prepared);
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

impl App {
    /// The handlers of `scripts`, from the script cache: the one way client
    /// requests and subrequests alike get their scripts.
    pub(crate) async fn handlers(
        &self,
        scripts: &PhaseScripts,
        shown_from: &std::path::Path,
        opened: Option<&OpenFile>,
    ) -> Result<Handlers, ScriptError> {
        self.scripts
            .load(&self.sandbox, scripts, shown_from, opened)
            .await
    }

    /// The next request's id.
    pub(crate) fn next_request_id(&self) -> u64 {
        self.next_request_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}
