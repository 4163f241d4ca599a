//! Which scripts handle a request path.
//!
//! Two ways, as people host Lua today:
//! - [`DocRoot`], CGI-style (luafcgid, mod_lua): `DIR/a/b.lua` serves `/a/b.lua`
//!   and `/a/b`, `DIR/a/index.lua` serves `/a/`; other files are static.
//! - [`Locations`], the nginx way: configured exact and prefix locations,
//!   each naming a script per phase ([`super::config`]).
//!
//! Paths arrive normalized (see [`super::request::normalize_path`]): no `..`,
//! no NUL. The document root still confines every file it resolves: the real
//! path (symlinks followed) must lie inside the root, and names starting with
//! `.` are never served.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// What serves a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Run these scripts; messages show paths relative to `shown_from`.
    Scripts {
        scripts: PhaseScripts,
        shown_from: PathBuf,
    },
    /// Send this file as it is.
    Static(PathBuf),
    NotFound,
}

/// The router of a site: one of the two ways, or both (a tenant's
/// locations first, then its document root).
#[derive(Debug, Clone)]
pub enum Router {
    DocRoot(DocRoot),
    Locations(Locations),
    Both(Locations, DocRoot),
}

impl Router {
    pub fn route(&self, uri: &[u8]) -> Route {
        match self {
            Router::DocRoot(root) => root.route(uri),
            Router::Locations(locations) => locations.route(uri),
            Router::Both(locations, root) => match locations.route(uri) {
                Route::NotFound => root.route(uri),
                route => route,
            },
        }
    }
}

/// A CGI-style document root.
#[derive(Debug, Clone)]
pub struct DocRoot {
    root: PathBuf,
    serve_static: bool,
}

impl DocRoot {
    /// `dir` must exist; it is resolved to its real path once.
    pub fn new(dir: &Path, serve_static: bool) -> std::io::Result<Self> {
        let root = dir.canonicalize()?;
        if !root.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                "not a directory",
            ));
        }
        Ok(DocRoot { root, serve_static })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn route(&self, uri: &[u8]) -> Route {
        let relative = uri.strip_prefix(b"/").unwrap_or(uri);
        // Hidden files and directories (.git, .env, ...) are never served.
        if relative
            .split(|&b| b == b'/')
            .any(|segment| segment.starts_with(b"."))
        {
            return Route::NotFound;
        }
        let path = self.root.join(std::ffi::OsStr::from_bytes(relative));
        let script = |path: PathBuf| {
            self.confined_file(&path).map(|path| Route::Scripts {
                scripts: PhaseScripts::content(path),
                shown_from: self.root.clone(),
            })
        };
        if relative.is_empty() || uri.ends_with(b"/") {
            return script(path.join("index.lua")).unwrap_or(Route::NotFound);
        }
        if relative.ends_with(b".lua") {
            return script(path).unwrap_or(Route::NotFound);
        }
        let mut with_extension = path.clone().into_os_string();
        with_extension.push(".lua");
        if let Some(route) = script(PathBuf::from(with_extension)) {
            return route;
        }
        if let Some(route) = script(path.join("index.lua")) {
            return route;
        }
        match self.confined_file(&path) {
            Some(file) if self.serve_static => Route::Static(file),
            _ => Route::NotFound,
        }
    }

    /// `path`'s real location, if it is a regular file inside the root.
    fn confined_file(&self, path: &Path) -> Option<PathBuf> {
        let real = path.canonicalize().ok()?;
        (real.starts_with(&self.root) && real.is_file()).then_some(real)
    }
}

/// How a location matches, as in nginx: `=` exact, or a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Match {
    Exact,
    Prefix,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub path: String,
    pub matching: Match,
    pub scripts: PhaseScripts,
}

/// Configured locations, matched with nginx's precedence: an exact match
/// wins; otherwise the longest matching prefix.
#[derive(Debug, Clone)]
pub struct Locations {
    pub locations: Vec<Location>,
    /// Messages show script paths relative to this (the config's directory).
    pub shown_from: PathBuf,
}

impl Locations {
    pub fn find(&self, uri: &[u8]) -> Option<&Location> {
        let exact = self
            .locations
            .iter()
            .find(|l| l.matching == Match::Exact && l.path.as_bytes() == uri);
        exact.or_else(|| {
            self.locations
                .iter()
                .filter(|l| l.matching == Match::Prefix && uri.starts_with(l.path.as_bytes()))
                .max_by_key(|l| l.path.len())
        })
    }

    pub fn route(&self, uri: &[u8]) -> Route {
        match self.find(uri) {
            Some(location) => Route::Scripts {
                scripts: location.scripts.clone(),
                shown_from: self.shown_from.clone(),
            },
            None => Route::NotFound,
        }
    }
}

/// Which script handles each phase (`None`: the phase does nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseScripts {
    pub rewrite: Option<PathBuf>,
    pub access: Option<PathBuf>,
    pub content: Option<PathBuf>,
    pub header_filter: Option<PathBuf>,
    pub body_filter: Option<PathBuf>,
    pub log: Option<PathBuf>,
}

impl PhaseScripts {
    /// A content handler alone.
    pub fn content(path: PathBuf) -> Self {
        PhaseScripts {
            content: Some(path),
            ..PhaseScripts::default()
        }
    }

    /// The script of each phase, in the order of the fields of the guest's
    /// `handlers` record (`crate::http::Handlers`).
    pub fn phases(&self) -> [&Option<PathBuf>; 6] {
        [
            &self.rewrite,
            &self.access,
            &self.content,
            &self.header_filter,
            &self.body_filter,
            &self.log,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(path: &str, matching: Match, content: &str) -> Location {
        Location {
            path: path.into(),
            matching,
            scripts: PhaseScripts::content(content.into()),
        }
    }

    #[test]
    fn nginx_precedence_exact_then_longest_prefix() {
        let locations = Locations {
            locations: vec![
                location("/", Match::Prefix, "root.lua"),
                location("/api/", Match::Prefix, "api.lua"),
                location("/api/v2/", Match::Prefix, "v2.lua"),
                location("/api/v2/health", Match::Exact, "health.lua"),
            ],
            shown_from: PathBuf::new(),
        };
        let content = |uri: &str| {
            locations
                .find(uri.as_bytes())
                .and_then(|l| l.scripts.content.clone())
        };
        assert_eq!(content("/api/v2/health"), Some("health.lua".into()));
        assert_eq!(content("/api/v2/healthz"), Some("v2.lua".into()));
        assert_eq!(content("/api/x"), Some("api.lua".into()));
        assert_eq!(content("/other"), Some("root.lua".into()));
        let no_root = Locations {
            locations: vec![location("/api/", Match::Prefix, "a.lua")],
            shown_from: PathBuf::new(),
        };
        assert_eq!(no_root.route(b"/"), Route::NotFound);
    }
}
