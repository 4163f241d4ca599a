//! The Lua scripts that handle a request, one per phase, read from disk
//! and kept in memory, compiled ([`ScriptCache`]); and the compiler that
//! `require` uses for modules from lib dirs ([`SandboxCompiler`]).

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::{Handlers, Source};
use crate::caps::files::{Compiled, ModuleCompiler};
use crate::runtime::Sandbox;
use crate::sandbox::{Limits, log_text};
use crate::site::routing::{OpenFile, ScriptFile};

pub use crate::site::routing::PhaseScripts;

/// A script that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: {source}")]
pub struct ScriptError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

impl PhaseScripts {
    /// Read every script. Each is reported in messages under its path
    /// relative to `shown_from` (so logs and errors never show where on the
    /// host the scripts live).
    pub fn load(&self, shown_from: &Path) -> Result<Handlers, ScriptError> {
        let mut sources: [Option<Source>; 7] = Default::default();
        for (path, source) in self.phases().into_iter().zip(&mut sources) {
            let Some(script) = path else { continue };
            let path = script.path();
            let error = |source| ScriptError {
                path: path.to_path_buf(),
                source,
            };
            let code = script.read().map_err(error)?;
            *source = Some(named_source(path, shown_from, code, false));
        }
        Ok(handlers(sources))
    }
}

/// A script as the guest gets it: named by its path relative to
/// `shown_from`, as Lua names a file (`@path`); `code` is its source text,
/// or with `binary`, the bytecode a compile instance made of it.
fn named_source(path: &Path, shown_from: &Path, code: Vec<u8>, binary: bool) -> Source {
    let shown = path.strip_prefix(shown_from).unwrap_or(path);
    Source {
        name: format!("@{}", shown.display()),
        code,
        binary,
    }
}

/// The handlers of the sources given in [`PhaseScripts::phases`]' order.
fn handlers(sources: [Option<Source>; 7]) -> Handlers {
    let [
        rewrite,
        access,
        content,
        header_filter,
        body_filter,
        log,
        balancer,
    ] = sources;
    Handlers {
        rewrite,
        access,
        content,
        header_filter,
        body_filter,
        log,
        balancer,
    }
}

pub use crate::site::routing::MAX_SCRIPT_BYTES;
/// Scripts kept in memory; past this, the least recently used is dropped.
pub const MAX_CACHED_SCRIPTS: usize = 100_000;
/// Bytes the scripts kept in memory hold in all (their bytecode, or the
/// source of those that never compiled, and their paths); past this, the
/// least recently used are dropped.
pub const MAX_CACHED_SCRIPT_BYTES: usize = 256 << 20;

/// A file's identity for change detection: modification time, size, inode.
type Stamp = (SystemTime, u64, u64);

fn stamp(meta: &std::fs::Metadata) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    (
        meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        meta.len(),
        meta.ino(),
    )
}

struct Entry {
    /// The version of the file `code` is.
    stamp: Stamp,
    code: Code,
    /// A newer version that did not compile (kept out; not retried).
    rejected: Option<Stamp>,
    last_used: u64,
}

/// A script version as requests get it: the bytecode its compile made, or
/// (for a version that never compiled) its source text, whose requests
/// then fail with the syntax error.
#[derive(Clone)]
struct Code {
    bytes: Arc<[u8]>,
    binary: bool,
}

/// The bytes an entry for `path` holds.
fn entry_bytes(path: &Path, code: &Code) -> usize {
    code.bytes.len() + path.as_os_str().len()
}

/// The cached scripts by path, within bounds of entries and bytes.
struct Entries {
    map: HashMap<PathBuf, Entry>,
    /// What the entries hold in all ([`entry_bytes`]).
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

impl Entries {
    /// Keep `entry` for `path` (replacing what was kept for it), dropping
    /// the least recently used others until both bounds hold. An entry
    /// larger than the byte bound by itself is not kept.
    fn insert(&mut self, path: &Path, entry: Entry) {
        if let Some(old) = self.map.remove(path) {
            self.bytes -= entry_bytes(path, &old.code);
        }
        let size = entry_bytes(path, &entry.code);
        if size > self.max_bytes || self.max_entries == 0 {
            return;
        }
        while self.map.len() >= self.max_entries || self.bytes + size > self.max_bytes {
            let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, entry)| entry.last_used)
                .map(|(path, _)| path.clone())
            else {
                break;
            };
            if let Some(old) = self.map.remove(&oldest) {
                self.bytes -= entry_bytes(&oldest, &old.code);
            }
        }
        self.bytes += size;
        self.map.insert(path.to_path_buf(), entry);
    }
}

/// What a [`ScriptCache`] holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScriptCacheStats {
    /// Script versions kept.
    pub scripts: usize,
    /// Bytes they hold in all (bytecode or source, and paths).
    pub bytes: usize,
}

/// Scripts in memory, each checked against its file on every use (one
/// `fstat` of the file the request opened) and re-read from that same open
/// file when it changed. A new version is compiled before it serves, in an
/// instance of its own that runs none of it: if it has a syntax error while
/// an older version compiled, the older one keeps serving and the error is
/// logged, so a broken edit never takes a site down. What that compile made
/// (bytecode with debug information) is what requests load, so a request
/// does not parse its scripts. A request gets every script of its phases at
/// its start and runs with those to its end. At most [`MAX_CACHED_SCRIPTS`]
/// versions and [`MAX_CACHED_SCRIPT_BYTES`] are kept; the least recently
/// used go first.
pub struct ScriptCache {
    entries: Mutex<Entries>,
    uses: AtomicU64,
    compiles: AtomicU64,
}

impl Default for ScriptCache {
    fn default() -> Self {
        ScriptCache::with_bounds(MAX_CACHED_SCRIPTS, MAX_CACHED_SCRIPT_BYTES)
    }
}

/// What compiling a new version of a script or module may spend.
fn compile_limits() -> Limits {
    Limits {
        fuel: 2_000_000_000,
        timeout: Duration::from_secs(2),
        ..Limits::default()
    }
}

impl ScriptCache {
    /// A cache of at most `max_entries` script versions holding at most
    /// `max_bytes` in all.
    pub fn with_bounds(max_entries: usize, max_bytes: usize) -> Self {
        ScriptCache {
            entries: Mutex::new(Entries {
                map: HashMap::new(),
                bytes: 0,
                max_entries,
                max_bytes,
            }),
            uses: AtomicU64::new(0),
            compiles: AtomicU64::new(0),
        }
    }

    /// The handlers of `scripts`, from memory when their files are
    /// unchanged. A script `opened` already (by the router, beneath a
    /// document root) is read from that handle; the others are opened by
    /// their paths, once each.
    pub async fn load(
        &self,
        sandbox: &Sandbox,
        scripts: &PhaseScripts,
        shown_from: &Path,
        opened: Option<&OpenFile>,
    ) -> Result<Handlers, ScriptError> {
        let mut sources: [Option<Source>; 7] = Default::default();
        for (path, source) in scripts.phases().into_iter().zip(&mut sources) {
            let Some(script) = path else { continue };
            let path = script.path();
            let shown = path.strip_prefix(shown_from).unwrap_or(path);
            let opened = opened.filter(|file| file.path() == path);
            let code = self.script(sandbox, script, shown, opened).await?;
            *source = Some(named_source(
                path,
                shown_from,
                code.bytes.to_vec(),
                code.binary,
            ));
        }
        Ok(handlers(sources))
    }

    /// How many script versions this cache compiled.
    pub fn compiles(&self) -> u64 {
        self.compiles.load(Ordering::Relaxed)
    }

    /// What the cache holds now.
    pub fn stats(&self) -> ScriptCacheStats {
        let entries = self.lock();
        ScriptCacheStats {
            scripts: entries.map.len(),
            bytes: entries.bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn script(
        &self,
        sandbox: &Sandbox,
        script: &ScriptFile,
        shown: &Path,
        opened: Option<&OpenFile>,
    ) -> Result<Code, ScriptError> {
        let path = script.path();
        let error = |source| ScriptError {
            path: path.to_path_buf(),
            source,
        };
        // The file is opened once; its version and its bytes both come from
        // that handle.
        let file = match opened {
            Some(file) => file.clone(),
            None => script.open().map_err(error)?,
        };
        let meta = file.metadata();
        let now = stamp(meta);
        let use_number = self.uses.fetch_add(1, Ordering::Relaxed);
        {
            let mut entries = self.lock();
            if let Some(entry) = entries.map.get_mut(path)
                && (entry.stamp == now || entry.rejected == Some(now))
            {
                entry.last_used = use_number;
                return Ok(entry.code.clone());
            }
        }
        let too_large = || {
            error(std::io::Error::other(format!(
                "larger than {} MiB",
                MAX_SCRIPT_BYTES >> 20
            )))
        };
        if meta.len() > MAX_SCRIPT_BYTES {
            return Err(too_large());
        }
        let source = file.read_at_most(MAX_SCRIPT_BYTES).map_err(error)?;
        if source.len() as u64 > MAX_SCRIPT_BYTES {
            return Err(too_large());
        }
        self.compiles.fetch_add(1, Ordering::Relaxed);
        let compiled = match sandbox
            .compile(&shown.display().to_string(), &source, &compile_limits())
            .await
        {
            Ok(result) => result,
            Err(failure) => return Err(error(std::io::Error::other(failure.to_string()))),
        };
        let mut entries = self.lock();
        let code = match (compiled, entries.map.get_mut(path)) {
            (Ok(bytecode), _) => Code {
                bytes: bytecode.into(),
                binary: true,
            },
            (Err(message), Some(previous)) => {
                if previous.rejected != Some(now) {
                    tracing::error!(
                        "{}: keeping the previous version of {} serving",
                        log_text::escape(message.as_bytes()),
                        shown.display()
                    );
                }
                previous.rejected = Some(now);
                previous.last_used = use_number;
                return Ok(previous.code.clone());
            }
            // A script that never compiled serves as it is: its requests
            // fail with the syntax error, in the log with the request.
            (Err(_), None) => Code {
                bytes: source.into(),
                binary: false,
            },
        };
        entries.insert(
            path,
            Entry {
                stamp: now,
                code: code.clone(),
                rejected: None,
                last_used: use_number,
            },
        );
        Ok(code)
    }
}

/// Compiles the modules `require` loads from lib dirs
/// ([`crate::caps::files::ModuleCompiler`]) the way [`ScriptCache`] compiles
/// scripts: in a fresh instance of the server's sandbox that runs none of
/// the module, under [`compile_limits`] and the requesting run's time left.
pub struct SandboxCompiler {
    sandbox: Arc<Sandbox>,
}

impl SandboxCompiler {
    /// The compiler of `sandbox`, as the files capability holds it.
    pub fn shared(sandbox: Arc<Sandbox>) -> Arc<dyn ModuleCompiler> {
        Arc::new(SandboxCompiler { sandbox })
    }
}

impl ModuleCompiler for SandboxCompiler {
    fn compile<'a>(
        &'a self,
        name: &'a str,
        source: &'a [u8],
        time: Duration,
    ) -> Pin<Box<dyn Future<Output = Compiled> + Send + 'a>> {
        Box::pin(async move {
            let mut limits = compile_limits();
            limits.timeout = limits.timeout.min(time).max(Duration::from_millis(1));
            match self.sandbox.compile(name, source, &limits).await {
                Ok(Ok(bytecode)) => Compiled::Bytecode(bytecode),
                Ok(Err(message)) => Compiled::Failed(message),
                Err(error) => Compiled::Unavailable(error.to_string()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(size: usize, last_used: u64) -> Entry {
        shared(vec![b'x'; size].into(), last_used)
    }

    /// An entry holding `bytes` (shared: counted in each entry that holds it).
    fn shared(bytes: Arc<[u8]>, last_used: u64) -> Entry {
        Entry {
            stamp: (SystemTime::UNIX_EPOCH, 0, 0),
            code: Code {
                bytes,
                binary: true,
            },
            rejected: None,
            last_used,
        }
    }

    fn entries(max_entries: usize, max_bytes: usize) -> Entries {
        Entries {
            map: HashMap::new(),
            bytes: 0,
            max_entries,
            max_bytes,
        }
    }

    fn total(entries: &Entries) -> usize {
        entries
            .map
            .iter()
            .map(|(path, entry)| entry_bytes(path, &entry.code))
            .sum()
    }

    #[test]
    fn the_script_cache_is_bounded_by_bytes_least_recently_used_first() {
        // Scripts as large as a script may be, the default bounds.
        let mut cache = entries(MAX_CACHED_SCRIPTS, MAX_CACHED_SCRIPT_BYTES);
        let large = MAX_SCRIPT_BYTES as usize;
        let code: Arc<[u8]> = vec![b'x'; large].into();
        for i in 0..200u64 {
            let path = format!("/site/s{i}.lua");
            cache.insert(Path::new(&path), shared(code.clone(), i));
            assert!(cache.bytes <= MAX_CACHED_SCRIPT_BYTES, "{}", cache.bytes);
            assert_eq!(cache.bytes, total(&cache));
        }
        let kept = cache.map.len();
        assert!(kept < 200 && kept >= MAX_CACHED_SCRIPT_BYTES / (large + 64) - 1);
        // The most recently used are the ones kept.
        assert!(cache.map.contains_key(Path::new("/site/s199.lua")));
        assert!(!cache.map.contains_key(Path::new("/site/s0.lua")));
        let oldest_kept = 200 - kept as u64;
        assert!(cache.map.values().all(|e| e.last_used >= oldest_kept));

        // A new version of a kept script replaces it, its bytes counted once.
        cache.insert(Path::new("/site/s199.lua"), entry(10, 500));
        assert_eq!(cache.bytes, total(&cache));
        assert_eq!(cache.map.len(), kept);
    }

    #[test]
    fn the_script_cache_is_bounded_by_count_and_skips_what_cannot_fit() {
        let mut cache = entries(3, 100);
        for i in 0..5u64 {
            cache.insert(Path::new(&format!("s{i}")), entry(1, i));
        }
        assert_eq!(cache.map.len(), 3);
        assert!(cache.map.contains_key(Path::new("s4")));
        // Larger than the whole bound: not kept, nothing dropped for it.
        cache.insert(Path::new("huge"), entry(200, 10));
        assert_eq!(cache.map.len(), 3);
        assert!(!cache.map.contains_key(Path::new("huge")));
        // One that fits drops as many of the least recently used as it must.
        cache.insert(Path::new("big"), entry(95, 11));
        assert_eq!(cache.map.len(), 1);
        assert_eq!(cache.bytes, 98);
    }
}
