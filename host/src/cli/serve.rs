//! `moonwall serve`: the web server, on a CGI-style document root (`--root`)
//! or on configured locations (`--config`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::builder::TypedValueParser as _;
use clap::{Args, ValueEnum};

use super::exit;
use super::limits::LimitArgs;
use crate::http::config::SiteConfig;
use crate::http::routing::{DocRoot, Router};
use crate::http::server::{self, App, ServerSettings};
use crate::sandbox::Sandbox;

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

    /// Serve the locations of a site configuration (TOML; see docs/serving.md).
    /// Its [limits] take precedence over the limit flags.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address to listen on [default: 127.0.0.1:8080, or the config's `listen`].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// With --root: answer 404 for files that are not scripts.
    #[arg(long)]
    pub no_static: bool,

    /// Log lines as human-readable text or as JSON objects (stderr).
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Connections open at once; more wait to be accepted.
    #[arg(long, value_name = "N", default_value_t = ServerSettings::default().max_connections,
          value_parser = clap::value_parser!(u64).range(1..).map(|n| n as usize))]
    pub max_connections: usize,

    /// Scripts running at once; more requests wait for a free instance.
    #[arg(long, value_name = "N", default_value_t = ServerSettings::default().max_running,
          value_parser = clap::value_parser!(u64).range(1..=10_000).map(|n| n as usize))]
    pub max_running: usize,

    /// Largest request body, in KiB (413 beyond).
    #[arg(long, value_name = "N", default_value_t = ServerSettings::default().max_request_body_bytes / 1024,
          value_parser = clap::value_parser!(u64).range(0..=(1 << 22)).map(|n| n as usize))]
    pub max_body_kib: usize,

    /// Largest request head (request line and headers), in KiB.
    #[arg(long, value_name = "N", default_value_t = ServerSettings::default().max_header_bytes / 1024,
          value_parser = clap::value_parser!(u64).range(8..=1024).map(|n| n as usize))]
    pub max_header_kib: usize,

    /// Most request headers.
    #[arg(long, value_name = "N", default_value_t = ServerSettings::default().max_headers,
          value_parser = clap::value_parser!(u64).range(1..=10_000).map(|n| n as usize))]
    pub max_headers: usize,

    /// Time a client has to send a request's headers, in milliseconds.
    #[arg(long, value_name = "N", default_value_t = ServerSettings::default().header_read_timeout.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout_ms: u64,

    /// On SIGTERM/SIGINT, time in-flight requests get to finish, in milliseconds.
    #[arg(long, value_name = "N", default_value_t = ServerSettings::default().shutdown_grace.as_millis() as u64)]
    pub shutdown_grace_ms: u64,

    #[command(flatten)]
    pub limits: LimitArgs,
}

fn usage(message: impl std::fmt::Display) -> u8 {
    eprintln!("error: {message}");
    exit::USAGE
}

pub fn run(args: ServeArgs) -> u8 {
    super::init_logging(matches!(args.log_format, LogFormat::Json));
    let mut limits = args.limits.limits();
    let mut listen = args.listen;
    let router = if let Some(config) = &args.config {
        match SiteConfig::load(config) {
            Ok(site) => {
                limits = site.limits;
                listen = listen.or(site.listen);
                Router::Locations(site.locations)
            }
            Err(error) => return usage(format!("invalid configuration:\n{error}")),
        }
    } else {
        let root = args.root.clone().expect("clap requires --root or --config");
        match DocRoot::new(&root, !args.no_static) {
            Ok(root) => Router::DocRoot(root),
            Err(error) => return usage(format!("cannot serve {}: {error}", root.display())),
        }
    };
    let listen = listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
    let settings = ServerSettings {
        max_connections: args.max_connections,
        max_request_body_bytes: args.max_body_kib * 1024,
        max_header_bytes: args.max_header_kib * 1024,
        max_headers: args.max_headers,
        header_read_timeout: Duration::from_millis(args.header_timeout_ms),
        shutdown_grace: Duration::from_millis(args.shutdown_grace_ms),
        max_running: args.max_running,
    };
    if let Err(error) = limits.validate() {
        return usage(error);
    }
    let instances = u32::try_from(settings.max_running + 8).unwrap_or(u32::MAX);
    let sandbox = match Sandbox::new(args.limits.engine_settings(instances)) {
        Ok(sandbox) => Arc::new(sandbox),
        Err(error) => {
            eprintln!("error: {error}");
            return exit::INTERNAL;
        }
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
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(listener) => listener,
            Err(error) => return usage(format!("cannot listen on {listen}: {error}")),
        };
        let address = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tracing::info!("moonwall listening on http://{address}");
        let app = App::new(sandbox, router, limits, settings);
        match server::serve(app, listener, shutdown_signal()).await {
            Ok(()) => exit::OK,
            Err(error) => {
                eprintln!("error: {error}");
                exit::INTERNAL
            }
        }
    })
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
