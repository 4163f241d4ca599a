//! `moonwall serve`: the web server, on a CGI-style document root (`--root`),
//! on a site's configured locations (`--config site.toml`), or for many
//! tenants (`--config moonwall.toml`, which names a `policies` directory).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::builder::TypedValueParser as _;
use clap::{Args, ValueEnum};

use super::exit;
use super::limits::LimitArgs;
use super::limits::in_range;
use crate::http::scripts::SandboxCompiler;
use crate::http::server::{self, App, ServerSettings};
use crate::runtime::Sandbox;
use crate::sandbox::EngineSettings;
use crate::site::config::SiteConfig;
use crate::site::limits::{ConnectionLimit, ConnectionValues, RequestLimit};
use crate::site::routing::ScriptFile;
use crate::site::routing::{DocRoot, Router};
use crate::tenants::metrics::Metrics;
use crate::tenants::{Registry, ServerConfig, prepare_init};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Serve DIR CGI-style: DIR/a/b.lua answers /a/b.lua and /a/b,
    /// DIR/a/index.lua answers /a/; other files are served as they are.
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "config",
        conflicts_with = "config"
    )]
    pub root: Option<PathBuf>,

    /// Serve the locations of a site configuration (TOML; see docs/serving.md;
    /// its [limits] take precedence over the limit flags), or, if the file
    /// names a `policies` directory, the tenants of a server configuration
    /// (docs/policies.md; each tenant's limits come from its policy).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address to listen on [default: 127.0.0.1:8080, or the config's `listen`].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Also serve HTTPS on this address [default: the config's `tls_listen`],
    /// with the certificate of --tls-cert (or the config's `[tls]`, and each
    /// tenant's own for its hosts, chosen by SNI).
    #[arg(long, value_name = "ADDR")]
    pub tls_listen: Option<SocketAddr>,

    /// The certificate chain (PEM, leaf first) HTTPS serves by default.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// With --root: answer 404 for files that are not scripts.
    #[arg(long)]
    pub no_static: bool,

    /// With --root: a Lua script run once at start (OpenResty's
    /// init_by_lua_file); every request starts from the state it leaves
    /// (its globals and the tables it built), in a fresh instance.
    #[arg(long, value_name = "FILE", requires = "root")]
    pub init_script: Option<PathBuf>,

    /// Log lines as human-readable text or as JSON objects (stderr).
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Connections open at once; more wait to be accepted.
    #[arg(long, value_name = "N", default_value_t = ServerSettings::default().max_connections,
          value_parser = clap::value_parser!(u64).range(1..).map(|n| n as usize))]
    pub max_connections: usize,

    /// Runs executing Lua at once, across all tenants; a request waiting on
    /// I/O (ngx.sleep, sockets, subrequests, a slow client) holds no slot
    /// [default: twice the cores; each tenant is also held to its own
    /// max_concurrency].
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=10_000).map(|n| n as usize))]
    pub max_running: Option<usize>,

    /// Requests in flight at once (admitted: running or waiting on I/O),
    /// across all tenants; each holds a sandbox instance. More wait in the
    /// queue [default: a quarter of the machine's memory at 2 MiB each,
    /// between 64 and 4096; each tenant is also held to its own
    /// max_in_flight].
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=100_000).map(|n| n as usize))]
    pub max_in_flight: Option<usize>,

    /// Largest request body, in KiB (413 beyond; at most 1 GiB).
    #[arg(long, value_name = "N", visible_alias = "max-request-body-kib",
          default_value_t = ServerSettings::default().max_request_body_bytes / 1024,
          value_parser = super::limits::in_range(RequestLimit::MaxRequestBodyKib.def()).map(|n| n as usize))]
    pub max_body_kib: usize,

    /// Largest request head (request line and headers), in KiB.
    #[arg(long, value_name = "N", default_value_t = ServerSettings::default().max_header_bytes / 1024,
          value_parser = clap::value_parser!(u64).range(8..=1024).map(|n| n as usize))]
    pub max_header_kib: usize,

    /// Most request headers.
    #[arg(long, value_name = "N", default_value_t = ServerSettings::default().max_headers,
          value_parser = clap::value_parser!(u64).range(1..=10_000).map(|n| n as usize))]
    pub max_headers: usize,

    /// Time a client has to send a request's head, in milliseconds: the
    /// first from the moment its connection is accepted (a connection that
    /// sends nothing, or only the HTTP/2 preface, is closed then), each next
    /// HTTP/1 one from the end of the previous response [default: 10000, or
    /// the config's [connections] header_timeout_ms].
    #[arg(long, value_name = "N", value_parser = in_range(ConnectionLimit::HeaderTimeoutMs.def()))]
    pub header_timeout_ms: Option<u64>,

    /// Time a connection that has had a request may have none in progress
    /// (an HTTP/2 connection no open stream), in milliseconds; then it is
    /// closed [default: 30000, or the config's [connections] idle_timeout_ms].
    #[arg(long, value_name = "N", value_parser = in_range(ConnectionLimit::IdleTimeoutMs.def()))]
    pub idle_timeout_ms: Option<u64>,

    /// Longest wait for more of a request body, in milliseconds; then 408
    /// and the connection is closed [default: 10000, or the config's
    /// [connections] body_timeout_ms].
    #[arg(long, value_name = "N", value_parser = in_range(ConnectionLimit::BodyTimeoutMs.def()))]
    pub body_timeout_ms: Option<u64>,

    /// Slowest average rate of a request body after its first
    /// --body-timeout-ms, in bytes per second; slower: 408 [default: 1024,
    /// or the config's [connections] min_body_bytes_per_sec].
    #[arg(long, value_name = "N", value_parser = in_range(ConnectionLimit::MinBodyBytesPerSec.def()))]
    pub min_body_bytes_per_sec: Option<u64>,

    /// Connections open at once from one client IP address; more are closed
    /// as soon as they are accepted [default: 256, or the config's
    /// [connections] max_connections_per_client].
    #[arg(long, value_name = "N", value_parser = in_range(ConnectionLimit::MaxConnectionsPerClient.def()))]
    pub max_connections_per_client: Option<u64>,

    /// Longest a write to the client may wait for it to take more of a
    /// response, in milliseconds, between two writes that make progress (not
    /// for the whole response); then the connection is closed [default:
    /// 60000, or the config's [connections] send_timeout_ms].
    #[arg(long, value_name = "N", value_parser = in_range(ConnectionLimit::SendTimeoutMs.def()))]
    pub send_timeout_ms: Option<u64>,

    /// On SIGTERM/SIGINT, time in-flight requests get to finish, in milliseconds.
    #[arg(long, value_name = "N", default_value_t = ServerSettings::default().shutdown_grace.as_millis() as u64)]
    pub shutdown_grace_ms: u64,

    #[command(flatten)]
    pub limits: LimitArgs,
}

impl ServeArgs {
    /// The flags of the bounds on connections, each with its limit.
    fn connection_flags(&self) -> [(ConnectionLimit, Option<u64>); 6] {
        use ConnectionLimit as L;
        [
            (L::HeaderTimeoutMs, self.header_timeout_ms),
            (L::IdleTimeoutMs, self.idle_timeout_ms),
            (L::BodyTimeoutMs, self.body_timeout_ms),
            (L::MinBodyBytesPerSec, self.min_body_bytes_per_sec),
            (L::MaxConnectionsPerClient, self.max_connections_per_client),
            (L::SendTimeoutMs, self.send_timeout_ms),
        ]
    }
}

/// Raise this process's soft limit on open files to its hard limit: every
/// connection, outbound socket and file a script opens is a descriptor, and
/// the common soft default of 1,024 is reached by a few hundred clients,
/// after which `accept` fails for every tenant. `Ok(Some((from, to)))` when
/// it was raised, `Ok(None)` when it was already at the hard limit.
fn raise_open_files_limit() -> std::io::Result<Option<(u64, u64)>> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given, which lives here.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur >= limit.rlim_max {
        return Ok(None);
    }
    let from = limit.rlim_cur;
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: setrlimit reads the struct it is given; raising the soft
    // limit up to the hard one needs no privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Some((from, limit.rlim_max)))
}

fn usage(message: impl std::fmt::Display) -> u8 {
    eprintln!("error: {message}");
    exit::USAGE
}

pub fn run(args: ServeArgs) -> u8 {
    super::init_logging(matches!(args.log_format, LogFormat::Json));
    match raise_open_files_limit() {
        Ok(Some((from, to))) => tracing::info!("open files: soft limit raised from {from} to {to}"),
        Ok(None) => {}
        Err(error) => tracing::warn!("open files: the soft limit stays as it is: {error}"),
    }
    let settings = ServerSettings {
        max_connections: args.max_connections,
        max_request_body_bytes: args.max_body_kib * 1024,
        max_header_bytes: args.max_header_kib * 1024,
        max_headers: args.max_headers,
        shutdown_grace: Duration::from_millis(args.shutdown_grace_ms),
        max_running: args.max_running.unwrap_or_else(server::default_max_running),
        max_in_flight: args
            .max_in_flight
            .unwrap_or_else(EngineSettings::default_max_in_flight),
        ..ServerSettings::default()
    };
    let mut settings = settings;
    let mut engine = args.limits.engine_settings(0);
    let mut listen: Vec<SocketAddr> = args.listen.into_iter().collect();
    let mut metrics_listen = None;
    let mut reload_poll = None;
    // The config's [connections], under the flags.
    let mut connections = ConnectionValues::default();

    let server_config = match &args.config {
        Some(config) => {
            let text = match std::fs::read_to_string(config) {
                Ok(text) => text,
                Err(error) => return usage(format!("cannot read {}: {error}", config.display())),
            };
            if ServerConfig::is_server_config(&text) {
                let server_config = match ServerConfig::parse(config, &text) {
                    Ok(server_config) => server_config,
                    Err(error) => return usage(format!("invalid configuration:\n{error}")),
                };
                engine.max_memory_bytes = server_config.ceilings.memory_bytes();
                if listen.is_empty() {
                    listen = server_config.listen.clone();
                }
                metrics_listen = server_config.metrics_listen;
                settings.tls_listen = server_config.tls_listen.clone();
                settings.tls_default = server_config.tls.clone();
                reload_poll = server_config.reload_poll;
                connections = server_config.connections;
                Some(server_config)
            } else {
                None
            }
        }
        None => None,
    };
    let mut init_script = args.init_script.clone().map(ScriptFile::from);
    let single_site = if server_config.is_some() {
        None
    } else if let Some(config) = &args.config {
        match SiteConfig::load(config) {
            Ok(site) => {
                listen.extend(site.listen.filter(|_| listen.is_empty()));
                settings.tls_listen = site.tls_listen.into_iter().collect();
                settings.tls_default = site.tls;
                init_script = site.init_script;
                connections = site.connections;
                Some((Router::Locations(site.locations), site.limits))
            }
            Err(error) => return usage(format!("invalid configuration:\n{error}")),
        }
    } else {
        let root = args.root.clone().expect("clap requires --root or --config");
        match DocRoot::new(&root, !args.no_static) {
            Ok(root) => Some((Router::DocRoot(root), args.limits.limits())),
            Err(error) => return usage(format!("cannot serve {}: {error}", root.display())),
        }
    };
    if listen.is_empty() {
        listen.push(SocketAddr::from(([127, 0, 0, 1], 8080)));
    }
    if let Some(address) = args.tls_listen {
        settings.tls_listen = vec![address];
    }
    if let (Some(certificate), Some(key)) = (&args.tls_cert, &args.tls_key) {
        match crate::site::tls::Certificate::load(certificate, key) {
            Ok(loaded) => settings.tls_default = Some(loaded),
            Err(error) => return usage(format!("--tls-cert/--tls-key: {error}")),
        }
    }
    if !settings.tls_listen.is_empty() && settings.tls_default.is_none() && server_config.is_none()
    {
        return usage(
            "HTTPS needs a certificate: --tls-cert and --tls-key, or [tls] in the config"
                .to_string(),
        );
    }
    if let Some((_, limits)) = &single_site
        && let Err(error) = limits.validate()
    {
        return usage(error);
    }
    for (limit, flag) in args.connection_flags() {
        if let Some(value) = flag.or(connections.get(limit)) {
            settings.set_connection_limit(limit, value);
        }
    }
    engine.max_instances = settings.instance_pool_size();
    let sandbox = match Sandbox::new(engine) {
        Ok(sandbox) => Arc::new(sandbox),
        Err(error) => {
            eprintln!("error: {error}");
            return exit::INTERNAL;
        }
    };
    // The tenants' lib-dir modules are compiled by this sandbox, once per
    // file version, so that requests load them as bytecode.
    let registry = match server_config {
        Some(mut config) => {
            config.caps.module_compiler = Some(SandboxCompiler::shared(sandbox.clone()));
            config.sandbox = Some(sandbox.clone());
            match Registry::load(config, Metrics::new()) {
                Ok(registry) => Some(registry),
                Err(error) => return usage(format!("invalid configuration:\n{error}")),
            }
        }
        None => None,
    };
    let app = match (single_site, registry) {
        (Some((router, limits)), _) => {
            let prepared = match &init_script {
                Some(script) => {
                    let shown_from = script.path().parent().unwrap_or(Path::new(""));
                    let grants = crate::caps::Grants::none();
                    match prepare_init(&sandbox, script, shown_from, &limits, grants) {
                        Ok(prepared) => Some(prepared),
                        Err(error) => return usage(error),
                    }
                }
                None => None,
            };
            App::single_site(sandbox, router, limits, settings, prepared)
        }
        (None, Some(registry)) => App::with_registry(sandbox, Arc::new(registry), settings),
        (None, None) => unreachable!("one of the two is set above"),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return exit::INTERNAL;
        }
    };
    runtime.block_on(serve_all(app, listen, metrics_listen, reload_poll))
}

/// Listen on every address (and the metrics address), reload tenants on
/// SIGHUP and when their policy files change, until SIGTERM or SIGINT.
async fn serve_all(
    app: Arc<App>,
    listen: Vec<SocketAddr>,
    metrics_listen: Option<SocketAddr>,
    reload_poll: Option<Duration>,
) -> u8 {
    let server = match server::Server::bind(app.clone(), &listen, metrics_listen).await {
        Ok(server) => server,
        Err(error) => return usage(error.to_string()),
    };
    if app.registry.config().is_some() {
        tokio::spawn(reload_loop(app.registry.clone(), reload_poll));
    }
    shutdown_signal().await;
    match server.stop().await {
        Ok(()) => exit::OK,
        Err(error) => {
            eprintln!("error: {error}");
            exit::INTERNAL
        }
    }
}

/// Reload the tenants on SIGHUP, and when a policy file changes (checked
/// every `poll`).
async fn reload_loop(registry: Arc<Registry>, poll: Option<Duration>) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangup) => Some(hangup),
        Err(error) => {
            tracing::warn!("no reload on SIGHUP: {error}");
            None
        }
    };
    loop {
        let poll_tick = async {
            match poll {
                Some(every) => tokio::time::sleep(every).await,
                None => std::future::pending().await,
            }
        };
        let signalled = async {
            match &mut hangup {
                Some(hangup) => hangup.recv().await,
                None => std::future::pending().await,
            }
        };
        let forced = tokio::select! {
            _ = signalled => true,
            () = poll_tick => false,
        };
        let registry = registry.clone();
        // Reading and checking policy files is file I/O: off the workers.
        let _ = tokio::task::spawn_blocking(move || {
            if forced || registry.changed() {
                registry.reload();
            }
        })
        .await;
    }
}

/// SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = interrupt => {},
        _ = terminate.recv() => {},
    }
}
