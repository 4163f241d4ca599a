//! Upstreams: the servers a proxied location passes requests to, declared
//! by the operator (a site config, or the server config of a multi-tenant
//! server) and named by locations (`proxy = "http://NAME"`).
//!
//! ```toml
//! [upstreams.backend]
//! peers = ["127.0.0.1:9001", "127.0.0.1:9002"]   # tried in turn; the next on a failed connect
//! connect_timeout_ms = 5000
//! read_timeout_ms = 60000        # for the response head, and between body reads
//! send_timeout_ms = 60000        # for the request
//! keepalive = 32                 # idle connections kept
//! tries = 2                      # peers tried for one request (default: all)
//! host_header = "upstream"       # Host sent: "upstream" (the name, nginx's $proxy_host) or "client"
//! tls = false                    # true: TLS to the peers, `proxy = "https://NAME"`
//! tls_server_name = "api.example" # with tls: SNI and the name certificates must fit (default: NAME)
//! ```
//!
//! Peers are addresses, not names: the operator writes exactly what is
//! reached, and no name lookup happens on a request's path.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use toml::Spanned;

use super::config::Problems;

/// One `[upstreams.NAME]` table as written.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    peers: Spanned<Vec<String>>,
    connect_timeout_ms: Option<Spanned<u64>>,
    read_timeout_ms: Option<Spanned<u64>>,
    send_timeout_ms: Option<Spanned<u64>>,
    keepalive: Option<Spanned<u64>>,
    tries: Option<Spanned<u64>>,
    host_header: Option<Spanned<String>>,
    /// TLS to the peers (locations then say `https://NAME`).
    tls: Option<bool>,
    /// The name sent (SNI) and that their certificates must be valid for
    /// (default: the upstream's name).
    tls_server_name: Option<Spanned<String>>,
}

/// The `[upstreams]` table as written.
pub type UpstreamsFile = BTreeMap<Spanned<String>, UpstreamFile>;

/// What `Host` header the upstream gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostHeader {
    /// The upstream's name (nginx's default, `$proxy_host`).
    Upstream,
    /// The client's `Host`.
    Client,
}

/// An upstream, checked; shared by every location that names it, with its
/// idle connections.
pub struct Upstream {
    pub name: String,
    pub peers: Vec<SocketAddr>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub send_timeout: Duration,
    /// Idle connections kept (0: none).
    pub keepalive: usize,
    /// Peers tried for one request, at most.
    pub tries: usize,
    pub host_header: HostHeader,
    /// TLS to the peers: the server name their certificates must be valid
    /// for (verified against the server's roots, or its `tls_ca_file`).
    pub tls: Option<String>,
    /// Where the next request starts among the peers (round robin).
    next: AtomicUsize,
    /// Idle connections, the most recently used last.
    idle: Mutex<Vec<Idle>>,
}

/// An idle connection to a peer of an upstream: what the proxy keeps
/// (`caps::upstream` decides its type).
pub struct Idle {
    pub peer: SocketAddr,
    pub since: Instant,
    pub connection: Box<dyn std::any::Any + Send>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("peers", &self.peers)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Upstream {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.peers == other.peers
            && self.connect_timeout == other.connect_timeout
            && self.read_timeout == other.read_timeout
            && self.send_timeout == other.send_timeout
            && self.keepalive == other.keepalive
            && self.tries == other.tries
            && self.host_header == other.host_header
            && self.tls == other.tls
    }
}

impl Eq for Upstream {}

/// The longest idle connection is kept.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);

impl Upstream {
    /// The peers to try for one request, in order: round robin over the
    /// peers, at most `tries` of them.
    pub fn peers_to_try(&self) -> Vec<SocketAddr> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..self.tries.min(self.peers.len()))
            .map(|i| self.peers[(start + i) % self.peers.len()])
            .collect()
    }

    /// An idle connection to `peer`, if one is kept (and not too old).
    pub fn take_idle(&self, peer: SocketAddr) -> Option<Box<dyn std::any::Any + Send>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|c| c.since.elapsed() < KEEPALIVE_IDLE);
        let index = idle.iter().rposition(|c| c.peer == peer)?;
        Some(idle.remove(index).connection)
    }

    /// Keep a connection to `peer` for a later request (the oldest goes
    /// when `keepalive` are kept already).
    pub fn keep_idle(&self, peer: SocketAddr, connection: Box<dyn std::any::Any + Send>) {
        if self.keepalive == 0 {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() >= self.keepalive {
            idle.remove(0);
        }
        idle.push(Idle {
            peer,
            since: Instant::now(),
            connection,
        });
    }
}

/// The upstreams of a config, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Upstreams(pub BTreeMap<String, Arc<Upstream>>);

impl Upstreams {
    pub fn get(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.0.get(name)
    }

    /// Check `[upstreams]`; problems at their places.
    pub(crate) fn parse(file: &UpstreamsFile, problems: &mut Problems) -> Upstreams {
        let mut upstreams = BTreeMap::new();
        for (name, upstream) in file {
            if !crate::site::hosts::is_dns_name(name.get_ref()) {
                problems.at(
                    name.span(),
                    format!(
                        "upstream name `{}`: use letters, digits, '-', '_' and dots, like a host name",
                        name.get_ref()
                    ),
                );
                continue;
            }
            let mut peers = Vec::new();
            for peer in upstream.peers.get_ref() {
                match peer.parse::<SocketAddr>() {
                    Ok(address) => peers.push(address),
                    Err(_) => problems.at(
                        upstream.peers.span(),
                        format!(
                            "[upstreams.{}] peer `{peer}` is not an address like 127.0.0.1:9000",
                            name.get_ref()
                        ),
                    ),
                }
            }
            if upstream.peers.get_ref().is_empty() {
                problems.at(
                    upstream.peers.span(),
                    format!("[upstreams.{}] has no peers", name.get_ref()),
                );
                continue;
            }
            let mut ranged = |value: &Option<Spanned<u64>>, key: &str, default: u64, max: u64| {
                let Some(value) = value else { return default };
                let v = *value.get_ref();
                if v == 0 || v > max {
                    problems.at(
                        value.span(),
                        format!("[upstreams.{}] {key} must be 1 to {max}", name.get_ref()),
                    );
                    return default;
                }
                v
            };
            const HOUR_MS: u64 = 3_600_000;
            let connect_ms = ranged(
                &upstream.connect_timeout_ms,
                "connect_timeout_ms",
                5_000,
                HOUR_MS,
            );
            let read_ms = ranged(
                &upstream.read_timeout_ms,
                "read_timeout_ms",
                60_000,
                HOUR_MS,
            );
            let send_ms = ranged(
                &upstream.send_timeout_ms,
                "send_timeout_ms",
                60_000,
                HOUR_MS,
            );
            let tries = ranged(&upstream.tries, "tries", peers.len() as u64, 64) as usize;
            let keepalive = match &upstream.keepalive {
                Some(value) if *value.get_ref() > 1024 => {
                    problems.at(
                        value.span(),
                        format!("[upstreams.{}] keepalive must be 0 to 1024", name.get_ref()),
                    );
                    0
                }
                Some(value) => *value.get_ref() as usize,
                None => 32,
            };
            let host_header = match upstream
                .host_header
                .as_ref()
                .map(|h| (h, h.get_ref().as_str()))
            {
                None | Some((_, "upstream")) => HostHeader::Upstream,
                Some((_, "client")) => HostHeader::Client,
                Some((written, other)) => {
                    problems.at(
                        written.span(),
                        format!(
                            "[upstreams.{}] host_header `{other}`: \"upstream\" or \"client\"",
                            name.get_ref()
                        ),
                    );
                    HostHeader::Upstream
                }
            };
            let tls = match (upstream.tls, &upstream.tls_server_name) {
                (Some(true), Some(server_name)) => {
                    let text = server_name.get_ref();
                    let valid = crate::site::hosts::is_dns_name(&text.to_ascii_lowercase())
                        || text.parse::<std::net::IpAddr>().is_ok();
                    if !valid {
                        problems.at(
                            server_name.span(),
                            format!(
                                "[upstreams.{}] tls_server_name `{text}` is not a host name or an address",
                                name.get_ref()
                            ),
                        );
                    }
                    Some(text.to_ascii_lowercase())
                }
                (Some(true), None) => Some(name.get_ref().to_ascii_lowercase()),
                (_, Some(server_name)) => {
                    problems.at(
                        server_name.span(),
                        format!(
                            "[upstreams.{}] tls_server_name needs tls = true",
                            name.get_ref()
                        ),
                    );
                    None
                }
                _ => None,
            };
            upstreams.insert(
                name.get_ref().clone(),
                Arc::new(Upstream {
                    name: name.get_ref().clone(),
                    peers,
                    connect_timeout: Duration::from_millis(connect_ms),
                    read_timeout: Duration::from_millis(read_ms),
                    send_timeout: Duration::from_millis(send_ms),
                    keepalive,
                    tries,
                    host_header,
                    tls,
                    next: AtomicUsize::new(0),
                    idle: Mutex::new(Vec::new()),
                }),
            );
        }
        Upstreams(upstreams)
    }

    /// The upstream a location's `proxy = "http://NAME"` names, among
    /// these; else a problem at its place. `whose` says where these come
    /// from, for the message ("declared in this config", ...).
    pub(crate) fn resolve(
        &self,
        proxy: &Spanned<String>,
        whose: &str,
        problems: &mut Problems,
    ) -> Option<Arc<Upstream>> {
        let text = proxy.get_ref();
        let (tls, name) = match (text.strip_prefix("http://"), text.strip_prefix("https://")) {
            (Some(name), _) => (false, name),
            (_, Some(name)) => (true, name),
            _ => {
                problems.at(
                    proxy.span(),
                    format!(
                        "proxy `{text}`: name an upstream as \"http://NAME\" or \"https://NAME\" (declared in [upstreams.NAME])"
                    ),
                );
                return None;
            }
        };
        let name = name.strip_suffix('/').unwrap_or(name);
        match self.get(name) {
            Some(upstream) if upstream.tls.is_some() != tls => {
                problems.at(
                    proxy.span(),
                    if tls {
                        format!("proxy `{text}`: upstream `{name}` is plain HTTP (add tls = true to [upstreams.{name}] for https)")
                    } else {
                        format!("proxy `{text}`: upstream `{name}` speaks TLS: write https://{name}")
                    },
                );
                None
            }
            Some(upstream) => Some(upstream.clone()),
            None => {
                let known: Vec<&str> = self.0.keys().map(String::as_str).collect();
                problems.at(
                    proxy.span(),
                    format!(
                        "proxy `{text}`: no upstream `{name}` is {whose} ({})",
                        if known.is_empty() {
                            "there is none".to_string()
                        } else {
                            format!("there are: {}", known.join(", "))
                        }
                    ),
                );
                None
            }
        }
    }
}
