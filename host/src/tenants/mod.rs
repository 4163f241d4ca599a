//! Tenants: many sites on one server, each confined by its own policy file.
//!
//! In the order a request meets them:
//! - [`hosts`] (from [`crate::site`]): the `Host` (or `:authority`) picks
//!   the tenant.
//! - [`admission`]: the tenant's request rate and concurrency cap, with a
//!   bounded queue.
//! - [`policy`]: what each tenant is allowed: limits under the server's
//!   ceilings, capabilities denied unless granted.
//! - [`metrics`]: per-tenant accounting for operators (Prometheus).
//!
//! The server config (`moonwall.toml`, [`config`]) names the listen
//! addresses, the ceilings and the policies directory. The set of tenants is one immutable
//! [`TenantSet`]; a reload builds a new set and swaps it in, and a request
//! keeps the set (and so the tenant version) it started with to its end.

pub mod admission;
pub mod config;
pub use crate::site::hosts;
pub mod metrics;
pub mod policy;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use crate::runtime::PreparedGuest;
use crate::sandbox::log_text;
use crate::site::config::ConfigError;
use crate::site::hosts::{HostPattern, HostTable, normalize_host};
use crate::site::routing::ScriptFile;
use crate::site::routing::{DocRoot, Router};
use admission::Admission;
pub use config::ServerConfig;
use policy::{Capabilities, Policy, TenantLimits};

/// One tenant, as a request sees it: immutable; a reload makes a new one.
pub struct Tenant {
    pub name: String,
    /// The policy file it came from (`None`: the single site of `--root` or
    /// a site config).
    pub policy_file: Option<PathBuf>,
    pub router: Router,
    pub limits: TenantLimits,
    pub capabilities: Capabilities,
    /// What the capabilities grant, built from `capabilities` (shared
    /// dicts live here, across reloads).
    pub grants: Arc<crate::caps::Grants>,
    pub admission: Arc<Admission>,
    pub metrics: metrics::TenantMetrics,
    /// The state its init script left, which every request of the tenant
    /// starts from (`None`: no init script, the sandbox's own).
    pub prepared: Option<Arc<PreparedGuest>>,
    /// Its certificate, served on the HTTPS listeners for its hosts.
    pub tls: Option<crate::site::tls::Certificate>,
    /// The stamps of its certificate and key files when they were read.
    tls_stamps: Vec<(PathBuf, Option<Stamp>)>,
    /// The init script and its stamp when it ran, to notice changes.
    init: Option<(PathBuf, Option<Stamp>)>,
    /// Its host patterns, each with its place in the policy (for messages).
    hosts: Vec<(HostPattern, String)>,
    /// Where its name is written (`file:line:col`), for messages.
    name_place: String,
    /// When the policy file was last modified, to notice changes.
    stamp: Option<(SystemTime, u64)>,
}

impl Tenant {
    /// The one tenant of a single-site server: every host, the given
    /// router and limits, the log at every level.
    pub fn single_site(router: Router, limits: TenantLimits, metrics: &metrics::Metrics) -> Tenant {
        Tenant {
            name: "default".into(),
            policy_file: None,
            router,
            admission: Arc::new(Admission::new(limits.admission.clone())),
            limits,
            capabilities: Capabilities {
                http: crate::caps::http::Config {
                    log_level: crate::bindings::moonwall::sandbox::log::Level::Debug,
                },
                ..Capabilities::default()
            },
            grants: crate::caps::Grants::none(),
            metrics: metrics.tenant("default"),
            prepared: None,
            tls: None,
            tls_stamps: Vec::new(),
            init: None,
            hosts: Vec::new(),
            name_place: String::new(),
            stamp: None,
        }
    }

    /// The same tenant, whose requests start from `prepared` (the state an
    /// init script left, [`prepare_init`]).
    pub fn with_prepared(mut self, prepared: Option<Arc<PreparedGuest>>) -> Tenant {
        self.prepared = prepared;
        self
    }

    /// Its init script, if it has one.
    pub fn init_script(&self) -> Option<&Path> {
        self.init.as_ref().map(|(script, _)| script.as_path())
    }

    /// Whether its init script changed since it ran, or its certificate
    /// or key since they were read.
    fn files_changed(&self) -> bool {
        self.init
            .iter()
            .chain(&self.tls_stamps)
            .any(|(file, stamp)| stamp_of(file) != *stamp)
    }

    fn from_policy(
        policy: Policy,
        stamp: Option<(SystemTime, u64)>,
        previous: Option<&Tenant>,
        metrics: &metrics::Metrics,
        config: &ServerConfig,
    ) -> Result<Tenant, String> {
        let grants = crate::caps::Grants::from_policy(
            &policy.tenant,
            &policy.capabilities,
            previous.map(|p| &*p.grants),
            &config.caps,
        )?;
        let grants = Arc::new(grants);
        let init = policy
            .init_script
            .as_ref()
            .map(|script| (script.path().to_path_buf(), stamp_of(script.path())));
        let prepared = match (&policy.init_script, &config.sandbox) {
            (Some(script), Some(sandbox)) => Some(prepare_init(
                sandbox,
                script,
                &policy.root,
                &policy.limits.sandbox,
                grants.clone(),
            )?),
            _ => None,
        };
        let root = DocRoot::new(&policy.root, policy.serve_static).map_err(|e| e.to_string())?;
        let router = if policy.locations.locations.is_empty() {
            Router::DocRoot(root)
        } else {
            Router::Both(policy.locations, root)
        };
        // Requests in flight keep counting against the same admission state
        // unless the limits changed.
        let admission = match previous {
            Some(previous) if *previous.admission.limits() == policy.limits.admission => {
                previous.admission.clone()
            }
            _ => Arc::new(Admission::new(policy.limits.admission.clone())),
        };
        Ok(Tenant {
            metrics: metrics.tenant(&policy.tenant),
            name: policy.tenant,
            policy_file: Some(policy.file),
            router,
            limits: policy.limits,
            capabilities: policy.capabilities,
            grants,
            admission,
            prepared,
            tls_stamps: policy
                .tls
                .iter()
                .flat_map(|tls| [&tls.file, &tls.key_file])
                .map(|file| (file.clone(), stamp_of(file)))
                .collect(),
            tls: policy.tls,
            init,
            hosts: policy.hosts,
            name_place: policy.tenant_place,
            stamp,
        })
    }
}

/// All tenants and which host goes to which.
pub struct TenantSet {
    pub tenants: Vec<Arc<Tenant>>,
    hosts: HostTable,
    default: Option<usize>,
}

impl TenantSet {
    /// A server of one site, answering every host.
    pub fn single(tenant: Tenant) -> TenantSet {
        TenantSet {
            tenants: vec![Arc::new(tenant)],
            hosts: HostTable::default(),
            default: Some(0),
        }
    }

    /// The tenant for a request's `Host`/authority, or the default tenant.
    pub fn for_host(&self, authority: Option<&str>) -> Option<&Arc<Tenant>> {
        let index = authority
            .and_then(normalize_host)
            .and_then(|host| self.hosts.lookup(&host))
            .or(self.default)?;
        self.tenants.get(index)
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<Tenant>> {
        self.tenants.iter().find(|t| t.name == name)
    }
}

/// The current tenant set, swapped whole by reloads.
pub struct Registry {
    current: RwLock<Arc<TenantSet>>,
    config: Option<ServerConfig>,
    /// The policy files and their stamps as of the last (re)load, broken
    /// ones included, so that a file is re-read only when it changes.
    seen: std::sync::Mutex<Vec<(PathBuf, Option<Stamp>)>>,
    pub metrics: Arc<metrics::Metrics>,
}

/// Problems found loading the tenants; the set is still usable if some
/// tenants loaded.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub problems: Vec<String>,
    /// Tenants whose new policy was refused and whose previous version
    /// keeps serving.
    pub kept: Vec<String>,
}

/// A file's modification time and size, to notice changes.
type Stamp = (SystemTime, u64);

/// Every policy file with its stamp, in name order.
fn policy_stamps(config: &ServerConfig) -> Vec<(PathBuf, Option<Stamp>)> {
    config
        .policy_files()
        .unwrap_or_default()
        .into_iter()
        .map(|file| {
            let stamp = stamp_of(&file);
            (file, stamp)
        })
        .collect()
}

/// [`policy_stamps`], and the init script of each tenant of `set` with its
/// stamp: what a reload looks at. A broken init script is refused once, not
/// at every poll: its new stamp is seen, even though its tenant keeps the
/// previous version.
fn watched_stamps(config: &ServerConfig, set: &TenantSet) -> Vec<(PathBuf, Option<Stamp>)> {
    let mut stamps = policy_stamps(config);
    stamps.extend(
        set.tenants
            .iter()
            .filter_map(|tenant| tenant.init_script())
            .map(|script| (script.to_path_buf(), stamp_of(script))),
    );
    // A renewed certificate is read again (and checked again).
    stamps.extend(
        set.tenants
            .iter()
            .flat_map(|tenant| &tenant.tls_stamps)
            .map(|(file, _)| (file.clone(), stamp_of(file))),
    );
    stamps
}

fn stamp_of(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl Registry {
    pub fn single(set: TenantSet, metrics: Arc<metrics::Metrics>) -> Registry {
        Registry {
            current: RwLock::new(Arc::new(set)),
            config: None,
            seen: Default::default(),
            metrics,
        }
    }

    /// Load every policy of `config`. Any problem is an error here: a
    /// server does not start on a half-valid configuration.
    pub fn load(
        config: ServerConfig,
        metrics: Arc<metrics::Metrics>,
    ) -> Result<Registry, ConfigError> {
        let (set, report) = build(&config, None, &metrics);
        if !report.problems.is_empty() {
            return Err(ConfigError {
                problems: report.problems,
            });
        }
        let seen = std::sync::Mutex::new(watched_stamps(&config, &set));
        Ok(Registry {
            current: RwLock::new(Arc::new(set)),
            config: Some(config),
            seen,
            metrics,
        })
    }

    /// The tenant set now; a request holds on to it until it ends.
    pub fn current(&self) -> Arc<TenantSet> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn config(&self) -> Option<&ServerConfig> {
        self.config.as_ref()
    }

    /// Whether any policy file was added, removed or changed since the
    /// last (re)load, or a tenant's init script.
    pub fn changed(&self) -> bool {
        let Some(config) = &self.config else {
            return false;
        };
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        *seen != watched_stamps(config, &self.current())
    }

    /// Re-read the policies; tenants whose new policy is broken keep their
    /// previous version. Logs what changed and what was refused.
    pub fn reload(&self) -> LoadReport {
        let Some(config) = &self.config else {
            return LoadReport::default();
        };
        let previous = self.current();
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = watched_stamps(config, &previous);
        let (set, report) = build(config, Some(&previous), &self.metrics);
        for problem in &report.problems {
            tracing::error!("reload: {problem}");
        }
        for name in &report.kept {
            tracing::warn!("reload: tenant {name} keeps its previous policy");
        }
        let names: Vec<&str> = set.tenants.iter().map(|t| t.name.as_str()).collect();
        tracing::info!("reloaded: {} tenant(s): {}", names.len(), names.join(", "));
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(set);
        report
    }
}

/// Run a tenant's init script (`script`, reported relative to `shown_from`)
/// under `limits` with `grants`, and snapshot the state it leaves: what the
/// tenant's requests start from. The error says where it failed
/// (`init.lua:3: message`), or which limit stopped it.
pub fn prepare_init(
    sandbox: &crate::runtime::Sandbox,
    script: &ScriptFile,
    shown_from: &Path,
    limits: &crate::sandbox::Limits,
    grants: Arc<crate::caps::Grants>,
) -> Result<Arc<PreparedGuest>, String> {
    use crate::sandbox::InitError;
    let path = script.path();
    let cannot = |e: std::io::Error| format!("cannot read init script {}: {e}", path.display());
    let code = script.read().map_err(cannot)?;
    let shown = path.strip_prefix(shown_from).unwrap_or(path);
    let source = crate::bindings::moonwall::sandbox::http_types::Source {
        name: format!("@{}", shown.display()),
        code,
        binary: false,
    };
    let caps = crate::caps::RequestCaps::for_init(grants);
    match crate::sandbox::block_on(sandbox.prepare_tenant(source, limits, caps.into())) {
        Ok(Ok(prepared)) => {
            tracing::info!(
                script = %shown.display(),
                "init script ran: {} fuel, {:?}; snapshot of {} KiB compiled in {:?}",
                prepared.init_fuel,
                prepared.init_time,
                prepared.component_bytes / 1024,
                prepared.compile_time
            );
            Ok(prepared)
        }
        Ok(Err(InitError::Lua { message, traceback })) => {
            if !traceback.is_empty() {
                let text = log_text::escape(format!("{message}\n{traceback}").as_bytes());
                tracing::error!(script = %shown.display(), "init script: {text}");
            }
            Err(format!("init script: {message}"))
        }
        Ok(Err(error)) => Err(format!("init script {}: {error}", shown.display())),
        Err(error) => Err(format!("init script {} not run: {error}", shown.display())),
    }
}

/// Load every policy of `config`, reporting every problem, with the
/// tenants that loaded (what `moonwall check` inspects).
pub fn load_all(config: &ServerConfig, metrics: &metrics::Metrics) -> (TenantSet, LoadReport) {
    build(config, None, metrics)
}

/// Build a tenant set from the policy files; with `previous`, a tenant
/// whose file is broken (or conflicts) keeps its previous version.
fn build(
    config: &ServerConfig,
    previous: Option<&TenantSet>,
    metrics: &metrics::Metrics,
) -> (TenantSet, LoadReport) {
    let mut report = LoadReport::default();
    let files = match config.policy_files() {
        Ok(files) => files,
        Err(error) => {
            report.problems.push(format!(
                "{}: cannot list policies: {error}",
                config.policies_dir.display()
            ));
            Vec::new()
        }
    };
    let previous_of = |file: &Path| {
        previous.and_then(|set| {
            set.tenants
                .iter()
                .find(|t| t.policy_file.as_deref() == Some(file))
        })
    };
    // Tenants whose policy did not change come first: an edited or new
    // policy cannot take their hosts away (it is refused instead).
    let unchanged = |file: &PathBuf| {
        previous_of(file)
            .filter(|t| t.stamp.is_some() && t.stamp == stamp_of(file) && !t.files_changed())
            .cloned()
    };
    let mut tenants: Vec<Arc<Tenant>> = files.iter().filter_map(unchanged).collect();
    for file in files.iter().filter(|file| unchanged(file).is_none()) {
        let old = previous_of(file);
        let candidate = Policy::load(
            file,
            &config.ceilings,
            &config.allowed_roots,
            &config.upstreams,
        )
        .map_err(|e| e.problems)
        .and_then(|policy| {
            Tenant::from_policy(policy, stamp_of(file), old.map(|t| &**t), metrics, config)
                .map(Arc::new)
                .map_err(|e| vec![format!("{}: {e}", file.display())])
        });
        match candidate.and_then(|tenant| conflicts(&tenant, &tenants).map(|()| tenant)) {
            Ok(tenant) => tenants.push(tenant),
            Err(problems) => {
                report.problems.extend(problems);
                // The previous version keeps serving, if it still fits.
                if let Some(old) = old {
                    metrics.reload(&old.name, false);
                    report.kept.push(old.name.clone());
                    if conflicts(old, &tenants).is_ok() {
                        tenants.push(old.clone());
                    }
                }
            }
        }
    }
    if previous.is_some() {
        for tenant in &tenants {
            if previous_of(tenant.policy_file.as_deref().unwrap_or(Path::new("")))
                .is_none_or(|old| !Arc::ptr_eq(old, tenant))
            {
                metrics.reload(&tenant.name, true);
            }
        }
    }
    let mut table = HostTable::default();
    for (index, tenant) in tenants.iter().enumerate() {
        for (pattern, _) in &tenant.hosts {
            table.insert(pattern, index);
        }
    }
    let default = match &config.default_tenant {
        Some(name) => match tenants.iter().position(|t| &t.name == name) {
            Some(index) => Some(index),
            None => {
                report.problems.push(format!(
                    "{}: default_tenant `{name}` is not a tenant in {}",
                    config.default_tenant_place,
                    config.policies_dir.display()
                ));
                None
            }
        },
        None => None,
    };
    (
        TenantSet {
            tenants,
            hosts: table,
            default,
        },
        report,
    )
}

/// Why `tenant` cannot join `accepted`: a name taken, or a host another
/// tenant already answers.
fn conflicts(tenant: &Tenant, accepted: &[Arc<Tenant>]) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    if let Some(other) = accepted.iter().find(|t| t.name == tenant.name) {
        problems.push(format!(
            "{}: tenant `{}` is already defined at {}",
            tenant.name_place, tenant.name, other.name_place
        ));
    }
    for (pattern, place) in &tenant.hosts {
        for other in accepted {
            if let Some((theirs, their_place)) = other
                .hosts
                .iter()
                .find(|(theirs, _)| theirs.overlaps(pattern))
            {
                problems.push(format!(
                    "{place}: host `{pattern}` overlaps `{theirs}` of tenant {} ({their_place})",
                    other.name
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}
