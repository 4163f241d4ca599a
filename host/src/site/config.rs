//! The site configuration of `moonwall serve --config FILE`: locations with a
//! script per phase, nginx-style, and optional limits.
//!
//! ```toml
//! listen = "127.0.0.1:8080"          # optional; --listen wins
//! tls_listen = "127.0.0.1:8443"      # optional: HTTPS, with [tls]
//!
//! [tls]                              # site::tls
//! certificate = "certs/site.pem"
//! key = "certs/site.key"
//!
//! [limits]                           # optional; each key optional
//! fuel = 10000000000
//! timeout_ms = 5000
//! memory_mib = 64
//! max_output_kib = 4096              # response body
//!
//! [connections]                      # optional; each key optional, the
//! header_timeout_ms = 10000          # flags of `moonwall serve` win
//! idle_timeout_ms = 30000            # (all keys: `site::limits::
//! body_timeout_ms = 10000            # CONNECTION_LIMITS`)
//! max_connections_per_client = 256
//! send_timeout_ms = 60000
//!
//! [upstreams.backend]               # site::upstreams
//! peers = ["127.0.0.1:9001"]
//!
//! [[location]]
//! path = "/app/"
//! access = "scripts/auth.lua"
//! proxy = "http://backend"           # instead of a content script
//!
//! [[location]]
//! path = "/api/"                     # starts with '/'
//! match = "prefix"                   # or "exact"; default "prefix"
//! access = "scripts/auth.lua"        # paths relative to this file
//! content = "scripts/api.lua"        # rewrite, access, content,
//!                                    # header_filter, body_filter, log
//! ```
//!
//! Parsing is strict: unknown keys, wrong types, impossible values, missing
//! scripts and duplicate locations are errors, each as `file:line:col: message`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::limits::ConnectionValues;
use super::routing::{Location, Locations, Match};
use super::routing::{PhaseScripts, ScriptFile};
use super::upstreams::Upstreams;
use crate::sandbox::Limits;

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteFile {
    listen: Option<Spanned<String>>,
    /// An HTTPS listener, with the certificate of `[tls]`.
    tls_listen: Option<Spanned<String>>,
    tls: Option<super::tls::TlsFile>,
    /// Run once at start; every request starts from the state it leaves.
    init_script: Option<Spanned<PathBuf>>,
    limits: Option<LimitsFile>,
    #[serde(default)]
    connections: ConnectionsFile,
    #[serde(default, rename = "location")]
    locations: Vec<LocationFile>,
    /// The upstreams proxied locations name.
    #[serde(default)]
    upstreams: super::upstreams::UpstreamsFile,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    fuel: Option<Spanned<u64>>,
    timeout_ms: Option<Spanned<u64>>,
    memory_mib: Option<Spanned<u64>>,
    /// Also `max_response_body_kib`, its name in policies.
    #[serde(alias = "max_response_body_kib")]
    max_output_kib: Option<Spanned<u64>>,
}

/// The `[connections]` table of a site config or a server config: the keys
/// of [`super::limits::CONNECTION_LIMITS`].
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConnectionsFile {
    header_timeout_ms: Option<Spanned<u64>>,
    idle_timeout_ms: Option<Spanned<u64>>,
    body_timeout_ms: Option<Spanned<u64>>,
    min_body_bytes_per_sec: Option<Spanned<u64>>,
    max_connections_per_client: Option<Spanned<u64>>,
    send_timeout_ms: Option<Spanned<u64>>,
}

impl ConnectionsFile {
    /// The values written, each checked against its range (a value out of
    /// range is a problem, and left out).
    pub(crate) fn check(&self, problems: &mut Problems) -> ConnectionValues {
        use super::limits::ConnectionLimit as L;
        let written = [
            (L::HeaderTimeoutMs, &self.header_timeout_ms),
            (L::IdleTimeoutMs, &self.idle_timeout_ms),
            (L::BodyTimeoutMs, &self.body_timeout_ms),
            (L::MinBodyBytesPerSec, &self.min_body_bytes_per_sec),
            (L::MaxConnectionsPerClient, &self.max_connections_per_client),
            (L::SendTimeoutMs, &self.send_timeout_ms),
        ];
        let mut values = ConnectionValues::default();
        for (limit, value) in written {
            let Some(value) = value else { continue };
            match limit.def().check(*value.get_ref()) {
                Ok(checked) => values.set(limit, checked),
                Err(message) => problems.at(value.span(), format!("[connections] {message}")),
            }
        }
        values
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LocationFile {
    path: Spanned<String>,
    #[serde(rename = "match")]
    matching: Option<Match>,
    rewrite: Option<Spanned<PathBuf>>,
    access: Option<Spanned<PathBuf>>,
    content: Option<Spanned<PathBuf>>,
    header_filter: Option<Spanned<PathBuf>>,
    body_filter: Option<Spanned<PathBuf>>,
    log: Option<Spanned<PathBuf>>,
    /// `"http://NAME"`: pass the request to the upstream NAME (instead of
    /// a content script).
    proxy: Option<Spanned<String>>,
    /// With `proxy`: the script that picks the peer of each try.
    balancer: Option<Spanned<PathBuf>>,
}

/// A site configuration, checked.
#[derive(Debug, Clone)]
pub struct SiteConfig {
    pub listen: Option<std::net::SocketAddr>,
    /// Where to serve HTTPS, with `tls`'s certificate.
    pub tls_listen: Option<std::net::SocketAddr>,
    pub tls: Option<super::tls::Certificate>,
    /// OpenResty's `init_by_lua_file` (relative to the config's directory).
    pub init_script: Option<ScriptFile>,
    pub limits: Limits,
    /// Its `[connections]` bounds.
    pub connections: ConnectionValues,
    pub locations: Locations,
}

/// Problems in a configuration file, each `file:line:col: message`.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

/// 1-based line and column of byte `offset` in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map(|nl| before.len() - nl)
        .unwrap_or(before.len() + 1);
    (line, column)
}

/// The problems found in one file, each `file:line:col: message`.
pub(crate) struct Problems<'a> {
    pub(crate) file: &'a Path,
    pub(crate) text: &'a str,
    pub(crate) list: Vec<String>,
}

impl<'a> Problems<'a> {
    pub(crate) fn new(file: &'a Path, text: &'a str) -> Self {
        Problems {
            file,
            text,
            list: Vec::new(),
        }
    }

    pub(crate) fn at(&mut self, span: std::ops::Range<usize>, message: impl std::fmt::Display) {
        let (line, column) = line_col(self.text, span.start);
        self.list.push(format!(
            "{}:{line}:{column}: {message}",
            self.file.display()
        ));
    }

    /// A problem of the whole file, with no place in it.
    pub(crate) fn file(&mut self, message: impl std::fmt::Display) {
        self.list
            .push(format!("{}: {message}", self.file.display()));
    }

    /// Deserialize the file strictly; a syntax or schema error is the one
    /// problem reported.
    pub(crate) fn parse<T: serde::de::DeserializeOwned>(&mut self) -> Option<T> {
        match toml::from_str(self.text) {
            Ok(value) => Some(value),
            Err(error) => {
                let message = error.message().to_string();
                match error.span() {
                    Some(span) => self.at(span, message),
                    None => self.file(message),
                }
                None
            }
        }
    }

    /// The problems, in the order of the file (those of the whole file
    /// first), whatever order they were found in.
    pub(crate) fn into_error(self) -> ConfigError {
        let prefix = format!("{}:", self.file.display());
        let position = |problem: &String| -> (usize, usize) {
            let mut numbers = problem
                .strip_prefix(&prefix)
                .unwrap_or("")
                .splitn(3, ':')
                .map(|n| n.parse::<usize>().ok());
            match (numbers.next().flatten(), numbers.next().flatten()) {
                (Some(line), Some(column)) => (line, column),
                _ => (0, 0),
            }
        };
        let mut problems = self.list;
        problems.sort_by_cached_key(position);
        ConfigError { problems }
    }
}

/// Read `file` for parsing, or say why not.
pub(crate) fn read_config(file: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(file).map_err(|e| ConfigError {
        problems: vec![format!("{}: cannot read: {e}", file.display())],
    })
}

impl SiteConfig {
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        Self::parse(file, &read_config(file)?)
    }

    /// Parse `text`, the contents of `file` (scripts are relative to its directory).
    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        let mut problems = Problems::new(file, text);
        let Some(site) = problems.parse::<SiteFile>() else {
            return Err(problems.into_error());
        };
        let base = file.parent().map(Path::to_path_buf).unwrap_or_default();

        let mut address = |listen: &Spanned<String>| match listen.get_ref().parse() {
            Ok(address) => Some(address),
            Err(_) => {
                problems.at(
                    listen.span(),
                    format!(
                        "`{}` is not an address like 127.0.0.1:8080",
                        listen.get_ref()
                    ),
                );
                None
            }
        };
        let listen = site.listen.as_ref().and_then(&mut address);
        let tls_listen = site.tls_listen.as_ref().and_then(&mut address);

        let mut limits = Limits::default();
        if let Some(file_limits) = &site.limits {
            use super::limits::RequestLimit as L;
            let written = [
                (L::Fuel, "fuel", &file_limits.fuel),
                (L::TimeoutMs, "timeout_ms", &file_limits.timeout_ms),
                (L::MemoryMib, "memory_mib", &file_limits.memory_mib),
                (
                    L::MaxResponseBodyKib,
                    "max_output_kib",
                    &file_limits.max_output_kib,
                ),
            ];
            for (limit, name, value) in written {
                let Some(value) = value else { continue };
                let checked = match limit.def().check_as(name, *value.get_ref()) {
                    Ok(checked) => checked,
                    Err(message) => {
                        problems.at(value.span(), message);
                        continue;
                    }
                };
                match limit {
                    L::Fuel => limits.fuel = checked,
                    L::TimeoutMs => limits.timeout = Duration::from_millis(checked),
                    L::MemoryMib => limits.memory_bytes = (checked as usize) << 20,
                    _ => limits.output_bytes = (checked as usize) << 10,
                }
            }
        }

        let tls = site
            .tls
            .as_ref()
            .and_then(|tls| tls.check(&base, None, &mut problems));
        if let (Some(listen), None) = (&site.tls_listen, &site.tls) {
            problems.at(
                listen.span(),
                "tls_listen needs a [tls] table with the certificate and key to serve",
            );
        }
        let connections = site.connections.check(&mut problems);
        let upstreams = Upstreams::parse(&site.upstreams, &mut problems);
        let locations = parse_locations(&site.locations, &base, None, &upstreams, &mut problems);
        let init_script = site
            .init_script
            .as_ref()
            .and_then(|script| script_file(script, &base, None, &mut problems));
        if site.locations.is_empty() {
            problems.list.push(format!(
                "{}: no [[location]]: nothing would be served",
                file.display()
            ));
        }

        if !problems.list.is_empty() {
            return Err(problems.into_error());
        }
        Ok(SiteConfig {
            listen,
            tls_listen,
            tls,
            init_script,
            limits,
            connections,
            locations: Locations {
                locations,
                shown_from: base,
            },
        })
    }
}

/// Check `[[location]]` tables: paths, duplicates, and that each script
/// exists (relative to `base`; with `confine`, its real path inside one of
/// those directories).
/// A script named in a config: `spanned` resolved against `base`; a
/// problem at its place if it is not a file, or (with `confine`) lies
/// outside the allowed roots.
///
/// A confined script is opened beneath the allowed root it lies in, each
/// time it is read ([`ScriptFile::open`]).
pub(crate) fn script_file(
    spanned: &Spanned<PathBuf>,
    base: &Path,
    confine: Option<&[PathBuf]>,
    problems: &mut Problems,
) -> Option<ScriptFile> {
    let resolved = base.join(spanned.get_ref());
    if !resolved.is_file() {
        problems.at(
            spanned.span(),
            format!("script {} not found", resolved.display()),
        );
        return Some(resolved.into());
    }
    let Some(roots) = confine else {
        return Some(resolved.into());
    };
    // The root its real path lies in; beneath it, the path as written (a
    // link inside the root, swapped to a new version, is followed then).
    let real = resolved.canonicalize().ok();
    let root = real
        .as_ref()
        .and_then(|real| roots.iter().find(|root| real.starts_with(root)));
    let Some(root) = root else {
        problems.at(
            spanned.span(),
            format!("script {} is outside the allowed roots", resolved.display()),
        );
        return Some(resolved.into());
    };
    let relative = match resolved.strip_prefix(root) {
        Ok(relative) => relative.to_path_buf(),
        // Written through a link from outside the root: its real path.
        Err(_) => real
            .as_ref()
            .and_then(|real| real.strip_prefix(root).ok())
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    };
    Some(ScriptFile::beneath(root, &relative))
}

pub(crate) fn parse_locations(
    files: &[LocationFile],
    base: &Path,
    confine: Option<&[PathBuf]>,
    upstreams: &Upstreams,
    problems: &mut Problems,
) -> Vec<Location> {
    // A tenant's (confined) locations may use the upstreams its policy grants.
    let whose = if confine.is_some() {
        "granted by this policy's [capabilities] upstreams"
    } else {
        "declared in this config's [upstreams]"
    };
    let mut locations: Vec<Location> = Vec::new();
    for location in files {
        let path = location.path.get_ref();
        if !path.starts_with('/') {
            problems.at(
                location.path.span(),
                format!("location path `{path}` must start with '/'"),
            );
            continue;
        }
        let matching = location.matching.unwrap_or(Match::Prefix);
        if locations
            .iter()
            .any(|l| l.path == *path && l.matching == matching)
        {
            problems.at(
                location.path.span(),
                format!("location `{path}` is defined twice"),
            );
            continue;
        }
        let mut script = |field: &Option<Spanned<PathBuf>>| -> Option<ScriptFile> {
            script_file(field.as_ref()?, base, confine, problems)
        };
        let scripts = PhaseScripts {
            rewrite: script(&location.rewrite),
            access: script(&location.access),
            content: script(&location.content),
            header_filter: script(&location.header_filter),
            body_filter: script(&location.body_filter),
            log: script(&location.log),
            balancer: script(&location.balancer),
        };
        if let (Some(balancer), None) = (&location.balancer, &location.proxy) {
            problems.at(
                balancer.span(),
                format!(
                    "location `{path}`: a balancer needs a proxy (it picks the upstream's peer)"
                ),
            );
            continue;
        }
        let proxy = match &location.proxy {
            Some(proxy) => {
                if location.content.is_some() {
                    problems.at(
                        proxy.span(),
                        format!("location `{path}` has both a content script and a proxy: one produces the response"),
                    );
                    continue;
                }
                match upstreams.resolve(proxy, whose, problems) {
                    Some(upstream) => Some(upstream),
                    None => continue,
                }
            }
            None => None,
        };
        if scripts == PhaseScripts::default() && proxy.is_none() {
            problems.at(
                location.path.span(),
                format!("location `{path}` names no script for any phase"),
            );
            continue;
        }
        locations.push(Location {
            path: path.clone(),
            matching,
            scripts,
            proxy,
        });
    }
    locations
}

/// A directory from a policy: it must exist, and its real path must lie in
/// one of the allowed roots.
pub(crate) fn allowed_dir(
    dir: &Spanned<PathBuf>,
    base: &Path,
    allowed_roots: &[PathBuf],
    problems: &mut Problems,
) -> Option<PathBuf> {
    let joined = base.join(dir.get_ref());
    let real = match joined.canonicalize() {
        Ok(real) if real.is_dir() => real,
        _ => {
            problems.at(
                dir.span(),
                format!("{} is not a directory", dir.get_ref().display()),
            );
            return None;
        }
    };
    if !allowed_roots.iter().any(|root| real.starts_with(root)) {
        problems.at(
            dir.span(),
            format!(
                "{} is outside the allowed roots ({})",
                dir.get_ref().display(),
                allowed_roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        return None;
    }
    Some(real)
}

/// A name of 1 to 64 letters, digits, `_` and the bytes of `extra`.
pub(crate) fn valid_name(name: &str, extra: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || extra.contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        SiteConfig::parse(Path::new("site.toml"), text)
            .unwrap_err()
            .problems
    }

    #[test]
    fn errors_name_file_line_and_column() {
        assert_eq!(
            errors("[[location]]\npath = \"/\"\ncontent = \"x.lua\"\nbogus = 1\n")[0],
            "site.toml:4:1: unknown field `bogus`, expected one of `path`, `match`, `rewrite`, `access`, `content`, `header_filter`, `body_filter`, `log`, `proxy`, `balancer`"
        );
        assert_eq!(
            errors("listen = 5\n[[location]]\npath=\"/\"\n")[0],
            "site.toml:1:10: invalid type: integer `5`, expected a string"
        );
        let problems = errors(
            "[limits]\nfuel = 0\nmemory_mib = 1\n[[location]]\npath = \"api\"\ncontent = \"a.lua\"\n",
        );
        assert_eq!(
            problems[0],
            "site.toml:2:8: fuel must be between 1 and 18446744073709551614"
        );
        assert_eq!(
            problems[1],
            "site.toml:3:14: memory_mib must be between 2 and 4095"
        );
        assert_eq!(
            problems[2],
            "site.toml:5:8: location path `api` must start with '/'"
        );
        assert_eq!(
            errors("[[location]]\npath = \"/\"\ncontent = \"missing.lua\"\n")[0],
            "site.toml:3:11: script missing.lua not found"
        );
        assert_eq!(
            errors("[[location]]\npath = \"/\"\n")[0],
            "site.toml:2:8: location `/` names no script for any phase"
        );
        // Problems of the whole file come first, then in the file's order.
        assert_eq!(
            errors("listen = \"x\"\n"),
            [
                "site.toml: no [[location]]: nothing would be served",
                "site.toml:1:10: `x` is not an address like 127.0.0.1:8080"
            ]
        );
    }
}
