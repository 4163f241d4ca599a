//! Which scripts handle a request path.
//!
//! Two ways, as people host Lua today:
//! - [`DocRoot`], CGI-style (luafcgid, mod_lua): `DIR/a/b.lua` serves `/a/b.lua`
//!   and `/a/b`, `DIR/a/index.lua` serves `/a/`; other files are static.
//! - [`Locations`], the nginx way: configured exact and prefix locations,
//!   each naming a script per phase ([`super::config`]).
//!
//! Paths arrive normalized (see [`super::request::normalize_path`]): no `..`,
//! no NUL. The document root still confines every file it resolves: each is
//! opened beneath the root by cap-std (on Linux `openat2` with
//! `RESOLVE_BENEATH`), so that no `..` or symlink leads out of it, and names
//! starting with `.` are never served. The router hands over the file it
//! opened ([`OpenFile`]): what is read is what was checked, even if the
//! tree changes meanwhile (a directory swapped for a symlink, ...).

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cap_std::fs::{Dir, OpenOptions};

use super::upstreams::Upstream;

/// What serves a request.
#[derive(Debug, Clone)]
pub enum Route {
    /// Run these scripts; messages show paths relative to `shown_from`.
    Scripts {
        scripts: PhaseScripts,
        shown_from: PathBuf,
        /// The script among `scripts` that the router already opened (a
        /// document root's): it is read from this handle, never opened
        /// again by its path.
        opened: Option<OpenFile>,
        /// A proxied location's upstream: the content phase passes the
        /// request there.
        proxy: Option<Arc<Upstream>>,
    },
    /// Send this file as it is (opened beneath the document root).
    Static(OpenFile),
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

/// A regular file, opened once for reading: its metadata and its bytes come
/// from this handle, so they are those of the file that was opened, whatever
/// happens to its path afterwards.
#[derive(Debug, Clone)]
pub struct OpenFile {
    /// The path it was opened by (for a document root's file: the root
    /// joined with the path inside it). It names the file in messages.
    path: PathBuf,
    file: Arc<std::fs::File>,
    meta: std::fs::Metadata,
}

impl OpenFile {
    /// Open `path` for reading, without blocking on a FIFO or a device; a
    /// directory or anything else that is not a regular file is refused.
    pub fn open(path: &Path) -> std::io::Result<OpenFile> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)?;
        OpenFile::checked(path.to_path_buf(), file)
    }

    /// `relative`, opened beneath `dir` (never leaving it, symlinks
    /// included), named `path` in messages.
    pub fn beneath(dir: &Dir, relative: &Path, path: PathBuf) -> std::io::Result<OpenFile> {
        let mut options = OpenOptions::new();
        options.read(true);
        // Never wait on a FIFO or become a terminal's controlling process.
        cap_std::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK | libc::O_NOCTTY);
        let file = dir.open_with(relative, &options)?.into_std();
        OpenFile::checked(path, file)
    }

    fn checked(path: PathBuf, file: std::fs::File) -> std::io::Result<OpenFile> {
        let meta = file.metadata()?;
        if meta.is_dir() {
            return Err(std::io::Error::from_raw_os_error(libc::EISDIR));
        }
        if !meta.is_file() {
            return Err(std::io::Error::other("not a regular file"));
        }
        Ok(OpenFile {
            path,
            file: Arc::new(file),
            meta,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its metadata when it was opened.
    pub fn metadata(&self) -> &std::fs::Metadata {
        &self.meta
    }

    /// Its bytes from the start, at most `max + 1` of them (a file that
    /// grew past `max` since it was opened shows as longer than `max`).
    /// Reads at explicit offsets: every read of a clone sees the whole file.
    pub fn read_at_most(&self, max: u64) -> std::io::Result<Vec<u8>> {
        struct At<'a>(&'a std::fs::File, u64);
        impl Read for At<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.read_at(buf, self.1)?;
                self.1 += n as u64;
                Ok(n)
            }
        }
        let limit = max.saturating_add(1);
        let mut bytes = Vec::with_capacity(self.meta.len().min(limit) as usize);
        At(&self.file, 0).take(limit).read_to_end(&mut bytes)?;
        Ok(bytes)
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
        // The root is opened for each request (a directory put in its place
        // serves from then on); every file beneath it is opened from there.
        let Ok(dir) = Dir::open_ambient_dir(&self.root, cap_std::ambient_authority()) else {
            return Route::NotFound;
        };
        let relative = Path::new(std::ffi::OsStr::from_bytes(relative));
        let script = |relative: &Path| {
            self.confined_file(&dir, relative)
                .map(|file| Route::Scripts {
                    scripts: PhaseScripts::content(file.path.clone()),
                    shown_from: self.root.clone(),
                    opened: Some(file),
                    proxy: None,
                })
        };
        if relative.as_os_str().is_empty() || uri.ends_with(b"/") {
            return script(&relative.join("index.lua")).unwrap_or(Route::NotFound);
        }
        if relative.as_os_str().as_bytes().ends_with(b".lua") {
            return script(relative).unwrap_or(Route::NotFound);
        }
        let mut with_extension = relative.as_os_str().to_owned();
        with_extension.push(".lua");
        if let Some(route) = script(Path::new(&with_extension)) {
            return route;
        }
        if let Some(route) = script(&relative.join("index.lua")) {
            return route;
        }
        match self.confined_file(&dir, relative) {
            Some(file) if self.serve_static => Route::Static(file),
            _ => Route::NotFound,
        }
    }

    /// `relative`, opened beneath the root `dir` (never leaving it, symlinks
    /// included), if it is a regular file there.
    fn confined_file(&self, dir: &Dir, relative: &Path) -> Option<OpenFile> {
        OpenFile::beneath(dir, relative, self.root.join(relative)).ok()
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
    /// `proxy = "http://NAME"`: the upstream the content phase passes the
    /// request to.
    pub proxy: Option<Arc<Upstream>>,
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
                opened: None,
                proxy: location.proxy.clone(),
            },
            None => Route::NotFound,
        }
    }
}

/// The largest script file read.
pub const MAX_SCRIPT_BYTES: u64 = 4 << 20;

/// A script a config names: its path (what messages and the script cache
/// know it by) and, for a tenant's, the allowed root it is opened beneath
/// each time, so that a directory or link swapped in after the policy was
/// checked cannot lead out of that root.
///
/// Cloned with every route: one shared allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptFile(Arc<Script>);

#[derive(Debug, PartialEq, Eq)]
struct Script {
    path: PathBuf,
    /// The root and the path inside it.
    beneath: Option<(PathBuf, PathBuf)>,
}

impl ScriptFile {
    /// `relative` beneath `root`: opened from `root`, never leaving it
    /// (symlinks included).
    pub fn beneath(root: &Path, relative: &Path) -> ScriptFile {
        ScriptFile(Arc::new(Script {
            path: root.join(relative),
            beneath: Some((root.to_path_buf(), relative.to_path_buf())),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.0.path
    }

    /// Its bytes, at most [`MAX_SCRIPT_BYTES`] of them (a bigger file is an
    /// error).
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        let code = self.open()?.read_at_most(MAX_SCRIPT_BYTES)?;
        if code.len() as u64 > MAX_SCRIPT_BYTES {
            return Err(std::io::Error::other(format!(
                "larger than {} MiB",
                MAX_SCRIPT_BYTES >> 20
            )));
        }
        Ok(code)
    }

    /// Open it: beneath its root if it has one, else by its path.
    pub fn open(&self) -> std::io::Result<OpenFile> {
        let Some((root, relative)) = &self.0.beneath else {
            return OpenFile::open(&self.0.path);
        };
        let dir = Dir::open_ambient_dir(root, cap_std::ambient_authority())?;
        OpenFile::beneath(&dir, relative, self.0.path.clone())
    }
}

impl From<PathBuf> for ScriptFile {
    /// A script opened by its path (one the operator named).
    fn from(path: PathBuf) -> ScriptFile {
        ScriptFile(Arc::new(Script {
            path,
            beneath: None,
        }))
    }
}

impl From<&str> for ScriptFile {
    fn from(path: &str) -> ScriptFile {
        ScriptFile::from(PathBuf::from(path))
    }
}

/// Which script handles each phase (`None`: the phase does nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PhaseScripts {
    pub rewrite: Option<ScriptFile>,
    pub access: Option<ScriptFile>,
    pub content: Option<ScriptFile>,
    pub header_filter: Option<ScriptFile>,
    pub body_filter: Option<ScriptFile>,
    pub log: Option<ScriptFile>,
    /// A proxied location's balancer: picks the peer of each try.
    pub balancer: Option<ScriptFile>,
}

impl PhaseScripts {
    /// A content handler alone.
    pub fn content(script: impl Into<ScriptFile>) -> Self {
        PhaseScripts {
            content: Some(script.into()),
            ..PhaseScripts::default()
        }
    }

    /// The script of each phase, in the order of the fields of the guest's
    /// `handlers` record (`crate::http::Handlers`).
    pub fn phases(&self) -> [&Option<ScriptFile>; 7] {
        [
            &self.rewrite,
            &self.access,
            &self.content,
            &self.header_filter,
            &self.body_filter,
            &self.log,
            &self.balancer,
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
            scripts: PhaseScripts::content(content),
            proxy: None,
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
                .and_then(|l| l.scripts.content.as_ref().map(|s| s.path().to_path_buf()))
        };
        assert_eq!(content("/api/v2/health"), Some("health.lua".into()));
        assert_eq!(content("/api/v2/healthz"), Some("v2.lua".into()));
        assert_eq!(content("/api/x"), Some("api.lua".into()));
        assert_eq!(content("/other"), Some("root.lua".into()));
        let no_root = Locations {
            locations: vec![location("/api/", Match::Prefix, "a.lua")],
            shown_from: PathBuf::new(),
        };
        assert!(matches!(no_root.route(b"/"), Route::NotFound));
    }

    /// A script named beneath a root is opened from that root each time:
    /// a link inside the root is followed, one leading out of it (or a
    /// directory on the way swapped for one) is refused.
    #[test]
    fn a_script_beneath_a_root_never_opens_outside_it() {
        let dir = std::env::temp_dir().join(format!("moonwall-beneath-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (root, outside) = (dir.join("root"), dir.join("outside"));
        for (path, text) in [
            (root.join("boot/init.lua"), "inside"),
            (root.join("v2/init.lua"), "v2"),
            (outside.join("init.lua"), "outside"),
        ] {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let script = ScriptFile::beneath(&root, Path::new("boot/init.lua"));
        assert_eq!(script.path(), root.join("boot/init.lua"));
        assert_eq!(script.read().unwrap(), b"inside");
        // A link inside the root: followed.
        std::fs::rename(root.join("boot"), root.join("boot.old")).unwrap();
        std::os::unix::fs::symlink("v2", root.join("boot")).unwrap();
        assert_eq!(script.read().unwrap(), b"v2");
        // A link out of it, absolute or relative: refused.
        std::fs::remove_file(root.join("boot")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("boot")).unwrap();
        assert!(script.read().is_err());
        std::fs::remove_file(root.join("boot")).unwrap();
        std::os::unix::fs::symlink("../outside", root.join("boot")).unwrap();
        assert!(script.read().is_err());
        // The same path opened as a plain path goes wherever it leads.
        let plain = ScriptFile::from(root.join("boot/init.lua"));
        assert_eq!(plain.read().unwrap(), b"outside");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
