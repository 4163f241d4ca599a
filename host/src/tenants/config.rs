//! The server config of a multi-tenant server (`moonwall.toml`): where the
//! policies are, the listen addresses, the allowed roots, the reload poll,
//! where shared dicts live, the ceilings on every tenant's limits, and the
//! bounds on connections (`[connections]`, as in a site config).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::policy::{Ceilings, LimitsFile};
use crate::site::config::{ConfigError, ConnectionsFile, Problems, read_config};
use crate::site::limits::ConnectionValues;

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerFile {
    /// One address or a list of them.
    listen: Option<Spanned<toml::Value>>,
    /// HTTPS: one address or a list of them.
    tls_listen: Option<Spanned<toml::Value>>,
    /// The certificate served when no tenant's fits the name asked for.
    tls: Option<crate::site::tls::TlsFile>,
    metrics_listen: Option<Spanned<String>>,
    policies: Spanned<PathBuf>,
    default_tenant: Option<Spanned<String>>,
    allowed_roots: Option<Vec<Spanned<PathBuf>>>,
    reload_poll_ms: Option<Spanned<u64>>,
    /// Where shared dicts live: "memory" (the default) or a redis:// URL.
    shared_dicts_backend: Option<Spanned<String>>,
    /// The CA certificates (PEM) TLS connections are verified against,
    /// instead of the system's.
    tls_ca_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    limits: LimitsFile,
    #[serde(default)]
    connections: ConnectionsFile,
    /// The upstreams tenants' proxied locations may be granted.
    #[serde(default)]
    upstreams: crate::site::upstreams::UpstreamsFile,
}

/// The server config of a multi-tenant server (`moonwall.toml`), checked.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub file: PathBuf,
    pub listen: Vec<SocketAddr>,
    /// HTTPS listeners: each tenant's certificate for its hosts (by SNI),
    /// else `tls`.
    pub tls_listen: Vec<SocketAddr>,
    /// The default certificate (`[tls]`).
    pub tls: Option<crate::site::tls::Certificate>,
    pub metrics_listen: Option<SocketAddr>,
    pub policies_dir: PathBuf,
    pub default_tenant: Option<String>,
    /// Where `default_tenant` is written (`file:line:col`).
    pub(crate) default_tenant_place: String,
    /// Real paths; every tenant root and granted directory lies in one.
    pub allowed_roots: Vec<PathBuf>,
    /// How often policy files are checked for changes (`None`: only on SIGHUP).
    pub reload_poll: Option<Duration>,
    pub ceilings: Ceilings,
    /// Its `[connections]` bounds.
    pub connections: ConnectionValues,
    /// The upstreams declared (`[upstreams.NAME]`); a policy grants some of
    /// them to its tenant (`[capabilities] upstreams`).
    pub upstreams: crate::site::upstreams::Upstreams,
    /// Server-wide settings of the capabilities (where shared dicts live).
    pub caps: crate::caps::CapsSettings,
    /// What runs tenants' init scripts (the server's sandbox); without one
    /// (`moonwall check`), an init script is checked but not run.
    pub sandbox: Option<Arc<crate::runtime::Sandbox>>,
}

/// `listen`-like value: one address or a list of them; a problem at each
/// entry that is not an address.
fn addresses(value: &Spanned<toml::Value>, key: &str, problems: &mut Problems) -> Vec<SocketAddr> {
    let mut listen = Vec::new();
    let texts: Vec<Option<&str>> = match value.get_ref() {
        toml::Value::String(one) => vec![Some(one.as_str())],
        toml::Value::Array(many) => many.iter().map(|v| v.as_str()).collect(),
        _ => vec![None],
    };
    for text in texts {
        match text.map(str::parse::<SocketAddr>) {
            Some(Ok(address)) => listen.push(address),
            Some(Err(_)) => {
                // Point at the entry itself inside a list.
                let bad = text.unwrap_or("");
                let span = value.span();
                let start = problems.text[span.clone()]
                    .find(&format!("\"{bad}\""))
                    .map_or(span.start, |offset| span.start + offset);
                problems.at(
                    start..span.end,
                    format!("`{bad}` is not an address like 127.0.0.1:8080"),
                )
            }
            None => problems.at(
                value.span(),
                format!("{key} must be an address like \"127.0.0.1:8080\" or a list of them"),
            ),
        }
    }
    listen
}

impl ServerConfig {
    /// Whether `text` is a multi-tenant server config (it names a
    /// `policies` directory) rather than a single site's config.
    pub fn is_server_config(text: &str) -> bool {
        toml::from_str::<toml::Table>(text).is_ok_and(|table| table.contains_key("policies"))
    }

    pub fn load(file: &Path) -> Result<ServerConfig, ConfigError> {
        Self::parse(file, &read_config(file)?)
    }

    pub fn parse(file: &Path, text: &str) -> Result<ServerConfig, ConfigError> {
        let mut problems = Problems::new(file, text);
        let Some(server) = problems.parse::<ServerFile>() else {
            return Err(problems.into_error());
        };
        // Paths are relative to the config's directory, and shown so.
        let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let real_base = if base.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base.clone()
        };
        let listen = server
            .listen
            .as_ref()
            .map(|value| addresses(value, "listen", &mut problems))
            .unwrap_or_default();
        let tls_listen = server
            .tls_listen
            .as_ref()
            .map(|value| addresses(value, "tls_listen", &mut problems))
            .unwrap_or_default();
        let tls = server
            .tls
            .as_ref()
            .and_then(|tls| tls.check(&base, None, &mut problems));
        let mut address = |text: &Spanned<String>| match text.get_ref().parse::<SocketAddr>() {
            Ok(address) => Some(address),
            Err(_) => {
                problems.at(
                    text.span(),
                    format!("`{}` is not an address like 127.0.0.1:8080", text.get_ref()),
                );
                None
            }
        };
        let metrics_listen = server.metrics_listen.as_ref().and_then(&mut address);

        let real_dir = |dir: &Spanned<PathBuf>, what: &str, problems: &mut Problems| match real_base
            .join(dir.get_ref())
            .canonicalize()
        {
            Ok(real) if real.is_dir() => Some(real),
            _ => {
                problems.at(
                    dir.span(),
                    format!("{what} {} is not a directory", dir.get_ref().display()),
                );
                None
            }
        };
        // Policy files are named as the config names them, in messages.
        let policies_dir = real_dir(&server.policies, "policies", &mut problems)
            .map(|_| base.join(server.policies.get_ref()));
        let allowed_roots = match &server.allowed_roots {
            Some(roots) if roots.is_empty() => {
                problems.file("allowed_roots is empty: no tenant root could be allowed");
                Vec::new()
            }
            Some(roots) => roots
                .iter()
                .filter_map(|root| real_dir(root, "allowed root", &mut problems))
                .collect(),
            // By default, tenants' files must lie beside the server config.
            None => real_base.canonicalize().into_iter().collect(),
        };
        let reload_poll = match &server.reload_poll_ms {
            None => Some(Duration::from_secs(1)),
            Some(ms) if *ms.get_ref() == 0 => None,
            Some(ms) if *ms.get_ref() <= 3_600_000 => Some(Duration::from_millis(*ms.get_ref())),
            Some(ms) => {
                problems.at(
                    ms.span(),
                    "reload_poll_ms must be at most 3600000 (0: only on SIGHUP)",
                );
                None
            }
        };
        let ceilings = Ceilings::parse(&server.limits, &mut problems);
        let upstreams = crate::site::upstreams::Upstreams::parse(&server.upstreams, &mut problems);
        let connections = server.connections.check(&mut problems);
        let dict_backend = match &server.shared_dicts_backend {
            None => crate::caps::dict::BackendConfig::default(),
            Some(text) => {
                crate::caps::dict::BackendConfig::parse(text.get_ref()).unwrap_or_else(|message| {
                    problems.at(text.span(), message);
                    crate::caps::dict::BackendConfig::default()
                })
            }
        };
        let tls_roots = match &server.tls_ca_file {
            None => crate::caps::tcp::tls::TlsRoots::system(),
            Some(path) => crate::caps::tcp::tls::TlsRoots::from_ca_file(&base.join(path.get_ref()))
                .unwrap_or_else(|message| {
                    problems.at(path.span(), message);
                    crate::caps::tcp::tls::TlsRoots::system()
                }),
        };
        let default_tenant = server.default_tenant.as_ref().map(|t| t.get_ref().clone());
        let default_tenant_place = server
            .default_tenant
            .as_ref()
            .map(|t| {
                let (line, column) = crate::site::config::line_col(text, t.span().start);
                format!("{}:{line}:{column}", file.display())
            })
            .unwrap_or_default();
        let Some(policies_dir) = policies_dir else {
            return Err(problems.into_error());
        };
        if !problems.list.is_empty() {
            return Err(problems.into_error());
        }
        Ok(ServerConfig {
            file: file.to_path_buf(),
            listen,
            tls_listen,
            tls,
            metrics_listen,
            policies_dir,
            default_tenant,
            default_tenant_place,
            allowed_roots,
            reload_poll,
            ceilings,
            connections,
            upstreams,
            caps: crate::caps::CapsSettings {
                dict_backend,
                module_compiler: None,
                tls_roots: Arc::new(tls_roots),
            },
            sandbox: None,
        })
    }

    /// The policy files, in name order.
    pub fn policy_files(&self) -> std::io::Result<Vec<PathBuf>> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.policies_dir)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| {
                path.extension().is_some_and(|ext| ext == "toml")
                    && !path
                        .file_name()
                        .is_some_and(|name| name.to_string_lossy().starts_with('.'))
            })
            .collect();
        files.sort();
        Ok(files)
    }
}
