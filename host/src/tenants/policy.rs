//! Tenant policy files (`policies/NAME.toml`) and the server's ceilings.
//!
//! A policy names the tenant, the hosts it answers, its script root and
//! optional phase locations, its `[limits]` and its `[capabilities]`. Every
//! key is checked strictly and every problem is reported as
//! `file:line:col: message`. The server's own `[limits]` (in moonwall.toml)
//! are ceilings: a policy cannot grant its tenant more. The reference of
//! every key is docs/policies.md.

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::admission::AdmissionLimits;
use crate::sandbox::Limits;
use crate::site::config::{
    ConfigError, LocationFile, Problems, allowed_dir, line_col, parse_locations, valid_name,
};
use crate::site::hosts::HostPattern;
use crate::site::limits::{LimitValues, RequestLimit};
use crate::site::routing::Locations;
use crate::site::upstreams::Upstreams;

/// `[limits]` as written, in a policy or (as ceilings) in moonwall.toml:
/// one field per limit of [`RequestLimit`], defined in `site::limits`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsFile {
    fuel: Option<Spanned<u64>>,
    timeout_ms: Option<Spanned<u64>>,
    memory_mib: Option<Spanned<u64>>,
    max_request_body_kib: Option<Spanned<u64>>,
    max_response_body_kib: Option<Spanned<u64>>,
    max_concurrency: Option<Spanned<u64>>,
    max_queue: Option<Spanned<u64>>,
    queue_timeout_ms: Option<Spanned<u64>>,
    requests_per_second: Option<Spanned<u64>>,
    burst: Option<Spanned<u64>>,
    max_in_flight: Option<Spanned<u64>>,
}

impl LimitsFile {
    /// The values as written, in the order of [`RequestLimit::ALL`].
    fn values(&self) -> [(RequestLimit, &Option<Spanned<u64>>); 11] {
        use RequestLimit as L;
        [
            (L::Fuel, &self.fuel),
            (L::TimeoutMs, &self.timeout_ms),
            (L::MemoryMib, &self.memory_mib),
            (L::MaxRequestBodyKib, &self.max_request_body_kib),
            (L::MaxResponseBodyKib, &self.max_response_body_kib),
            (L::MaxConcurrency, &self.max_concurrency),
            (L::MaxQueue, &self.max_queue),
            (L::QueueTimeoutMs, &self.queue_timeout_ms),
            (L::RequestsPerSecond, &self.requests_per_second),
            (L::Burst, &self.burst),
            (L::MaxInFlight, &self.max_in_flight),
        ]
    }
}

/// No rate limit.
const UNLIMITED: u64 = u64::MAX;

/// The server's ceilings: the most any policy may grant, each with where it
/// was set (for messages).
#[derive(Debug, Clone)]
pub struct Ceilings {
    values: LimitValues,
    origins: [String; 11],
}

impl Default for Ceilings {
    fn default() -> Self {
        let mut values = LimitValues::all(UNLIMITED);
        for limit in RequestLimit::ALL {
            let def = limit.def();
            // No ceiling on the rate unless the server sets one.
            if def.default_value().is_some() {
                values[limit] = def.max;
            }
        }
        Ceilings {
            values,
            origins: RequestLimit::ALL.map(|_| "moonwall's maximum".to_string()),
        }
    }
}

impl Ceilings {
    /// Check the `[limits]` of moonwall.toml.
    pub(crate) fn parse(file: &LimitsFile, problems: &mut Problems) -> Ceilings {
        let mut ceilings = Ceilings::default();
        for (limit, value) in file.values() {
            let Some(value) = value else { continue };
            if let Some(checked) = in_range(limit, value, problems) {
                let (line, column) = line_col(problems.text, value.span().start);
                ceilings.values[limit] = checked;
                ceilings.origins[limit as usize] =
                    format!("{}:{line}:{column}", problems.file.display());
            }
        }
        ceilings
    }

    /// The memory ceiling in bytes: the size of a pooled memory slot.
    pub fn memory_bytes(&self) -> usize {
        (self.values[RequestLimit::MemoryMib] as usize) << 20
    }

    /// The concurrency ceiling: how many runs any one tenant may hold.
    pub fn max_concurrency(&self) -> usize {
        self.values[RequestLimit::MaxConcurrency] as usize
    }
}

fn in_range(limit: RequestLimit, value: &Spanned<u64>, problems: &mut Problems) -> Option<u64> {
    match limit.def().check(*value.get_ref()) {
        Ok(checked) => Some(checked),
        Err(message) => {
            problems.at(value.span(), message);
            None
        }
    }
}

/// Everything a tenant's requests are held to.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantLimits {
    /// Fuel, time, memory, and the response body (`output_bytes`).
    pub sandbox: Limits,
    pub max_request_body_bytes: usize,
    pub admission: AdmissionLimits,
}

impl TenantLimits {
    fn parse(file: &LimitsFile, ceilings: &Ceilings, problems: &mut Problems) -> TenantLimits {
        use RequestLimit as L;
        let mut v = LimitValues::all(UNLIMITED);
        for (limit, value) in file.values() {
            let ceiling = ceilings.values[limit];
            v[limit] = limit
                .def()
                .default_value()
                .unwrap_or(UNLIMITED)
                .min(ceiling);
            let Some(value) = value else { continue };
            let Some(checked) = in_range(limit, value, problems) else {
                continue;
            };
            if checked > ceiling {
                problems.at(
                    value.span(),
                    format!(
                        "{} = {checked} is above the server's ceiling of {ceiling} ({})",
                        limit.def().key,
                        ceilings.origins[limit as usize]
                    ),
                );
                continue;
            }
            v[limit] = checked;
        }
        let rate = v[L::RequestsPerSecond];
        let rate = (rate != UNLIMITED).then_some(rate as f64);
        TenantLimits {
            sandbox: Limits {
                fuel: v[L::Fuel],
                timeout: Duration::from_millis(v[L::TimeoutMs]),
                memory_bytes: (v[L::MemoryMib] as usize) << 20,
                output_bytes: (v[L::MaxResponseBodyKib] as usize) << 10,
            },
            max_request_body_bytes: (v[L::MaxRequestBodyKib] as usize) << 10,
            admission: AdmissionLimits {
                max_concurrency: v[L::MaxConcurrency] as usize,
                max_in_flight: v[L::MaxInFlight] as usize,
                max_queue: v[L::MaxQueue] as usize,
                queue_timeout: Duration::from_millis(v[L::QueueTimeoutMs]),
                requests_per_second: rate,
                // The burst defaults to one second of requests.
                burst: u32::try_from(if file.burst.is_some() {
                    v[L::Burst]
                } else {
                    v[L::Burst].min(v[L::RequestsPerSecond])
                })
                .unwrap_or(u32::MAX)
                .max(1),
            },
        }
    }
}

pub use crate::caps::Capabilities;

pub use crate::caps::http::LOG_LEVELS;

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    tenant: Spanned<String>,
    #[serde(default)]
    hosts: Vec<Spanned<String>>,
    root: Spanned<PathBuf>,
    serve_static: Option<bool>,
    /// The certificate of the tenant's hosts on the HTTPS listeners.
    tls: Option<crate::site::tls::TlsFile>,
    /// OpenResty's `init_by_lua_file`: run once per tenant version, and
    /// every request starts from the state it leaves.
    init_script: Option<Spanned<PathBuf>>,
    #[serde(default)]
    limits: LimitsFile,
    /// Each key is checked by the capability whose section owns it
    /// (`caps::policy`); here, only their names.
    #[serde(default)]
    capabilities: std::collections::BTreeMap<Spanned<String>, serde::de::IgnoredAny>,
    #[serde(default, rename = "location")]
    locations: Vec<LocationFile>,
}

/// A tenant's policy, checked.
#[derive(Debug, Clone)]
pub struct Policy {
    pub tenant: String,
    /// Where the tenant's name is written (`file:line:col`), for messages.
    pub tenant_place: String,
    /// Where the policy came from.
    pub file: PathBuf,
    /// Each host pattern with its place (`file:line:col`) for messages.
    pub hosts: Vec<(HostPattern, String)>,
    /// The script root, a real path inside the allowed roots.
    pub root: PathBuf,
    pub serve_static: bool,
    /// Its certificate (files inside the allowed roots), served on the
    /// HTTPS listeners for its hosts; it names no other host.
    pub tls: Option<crate::site::tls::Certificate>,
    /// The init script (inside the root), if any.
    pub init_script: Option<crate::site::routing::ScriptFile>,
    /// Locations, matched before the root (script paths inside the root).
    pub locations: Locations,
    pub limits: TenantLimits,
    pub capabilities: Capabilities,
}

impl Policy {
    /// Read and check one policy file.
    pub fn load(
        file: &Path,
        ceilings: &Ceilings,
        allowed_roots: &[PathBuf],
        upstreams: &Upstreams,
    ) -> Result<Policy, ConfigError> {
        let text = crate::site::config::read_config(file)?;
        Self::parse(file, &text, ceilings, allowed_roots, upstreams)
    }

    pub fn parse(
        file: &Path,
        text: &str,
        ceilings: &Ceilings,
        allowed_roots: &[PathBuf],
        upstreams: &Upstreams,
    ) -> Result<Policy, ConfigError> {
        let mut problems = Problems::new(file, text);
        let Some(policy) = problems.parse::<PolicyFile>() else {
            return Err(problems.into_error());
        };
        let base = file.parent().map(Path::to_path_buf).unwrap_or_default();

        let tenant = policy.tenant.get_ref().clone();
        if !valid_name(&tenant, b"-") {
            problems.at(
                policy.tenant.span(),
                format!("tenant name `{tenant}`: use 1 to 64 letters, digits, '_' and '-'"),
            );
        }
        let mut hosts: Vec<(HostPattern, String)> = Vec::new();
        for host in &policy.hosts {
            match HostPattern::parse(host.get_ref()) {
                Ok(pattern) => {
                    if let Some((other, place)) = hosts.iter().find(|(p, _)| p.overlaps(&pattern)) {
                        problems.at(
                            host.span(),
                            format!(
                                "host `{}` overlaps `{other}` of the same tenant ({place})",
                                host.get_ref()
                            ),
                        );
                        continue;
                    }
                    let (line, column) = line_col(text, host.span().start);
                    hosts.push((pattern, format!("{}:{line}:{column}", file.display())));
                }
                Err(message) => problems.at(host.span(), message),
            }
        }

        let written: Vec<Spanned<String>> = policy.capabilities.into_keys().collect();
        let capabilities = crate::caps::policy::parse(
            &written,
            &mut crate::caps::policy::PolicyContext {
                base: &base,
                allowed_roots,
                upstreams,
                problems: &mut problems,
            },
        );
        // Its locations may proxy to the upstreams it is granted, no other.
        let granted = crate::caps::upstream::granted(upstreams, &capabilities.upstream);
        let root = allowed_dir(&policy.root, &base, allowed_roots, &mut problems);
        let locations = match &root {
            Some(root) => parse_locations(
                &policy.locations,
                root,
                Some(allowed_roots),
                &granted,
                &mut problems,
            ),
            None => Vec::new(),
        };
        let init_script = match (&root, &policy.init_script) {
            (Some(root), Some(script)) => {
                crate::site::config::script_file(script, root, Some(allowed_roots), &mut problems)
            }
            _ => None,
        };
        let tls = policy.tls.as_ref().and_then(|tls| {
            let certificate = tls.check(&base, Some(allowed_roots), &mut problems)?;
            let patterns: Vec<HostPattern> = hosts.iter().map(|(p, _)| p.clone()).collect();
            let outside = certificate.names_outside(&patterns);
            if !outside.is_empty() {
                problems.at(
                    tls.certificate.span(),
                    format!(
                        "[tls] the certificate names {}, not among this tenant's hosts: a tenant serves certificates for its own hosts only",
                        outside
                            .iter()
                            .map(|name| format!("`{name}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
                return None;
            }
            Some(certificate)
        });
        let limits = TenantLimits::parse(&policy.limits, ceilings, &mut problems);

        let Some(root) = root else {
            return Err(problems.into_error());
        };
        if !problems.list.is_empty() {
            return Err(problems.into_error());
        }
        let (line, column) = line_col(text, policy.tenant.span().start);
        Ok(Policy {
            tenant_place: format!("{}:{line}:{column}", file.display()),
            tenant,
            file: file.to_path_buf(),
            hosts,
            locations: Locations {
                locations,
                shown_from: root.clone(),
            },
            root,
            serve_static: policy.serve_static.unwrap_or(true),
            tls,
            init_script,
            limits,
            capabilities,
        })
    }
}
