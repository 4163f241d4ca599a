//! Read-only files (`io.open`, `io.lines`), Lua modules (`require`) and the
//! environment (`os.getenv`), as far as the policy grants them.
//!
//! Each granted directory (`read_dirs`, `lib_dirs`) is opened once per
//! tenant as a [`cap_std::fs::Dir`]; every path a script names is resolved
//! by cap-std inside that directory (on Linux `openat2` with
//! `RESOLVE_BENEATH`), so that neither `..`, an absolute path, nor a symlink
//! leads out of it. Only regular files are opened, for reading only, and
//! without blocking (a FIFO or device is refused, never waited on).
//!
//! Bounds on the host: [`MAX_OPEN_FILES`] per run, [`MAX_READ_BYTES`] per
//! read call (a whole file is read in chunks and only costs the guest's own
//! memory), [`MAX_MODULE_BYTES`] per module, and a per-tenant cache of
//! modules bounded in entries and bytes.
//!
//! Modules are compiled once per file version, when the grant has a
//! [`ModuleCompiler`] (a server's sandbox): in an instance of its own that
//! runs none of the module, so that the bytecode requests load never comes
//! from a request's instance. The cache keeps that bytecode, and a request
//! that requires modules does not parse them. Without a compiler (`moonwall
//! request`, tests), or for a module that does not compile, the guest gets
//! the source text and parses it (reporting the syntax error itself).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt};
use wasmtime::component::{HasSelf, Linker};

use super::RunCaps;
use crate::bindings::moonwall::sandbox::{env as env_wit, files as wit};

/// Most files one run may hold open at once.
pub const MAX_OPEN_FILES: usize = 16;
/// Most bytes one read call returns.
pub const MAX_READ_BYTES: u32 = 64 << 10;
/// The longest path `io.open` accepts.
pub const MAX_PATH_BYTES: usize = 4096;
/// The largest module `require` loads (as for scripts).
pub const MAX_MODULE_BYTES: u64 = 4 << 20;
/// The longest module name.
pub const MAX_MODULE_NAME_BYTES: usize = 255;
/// Modules (bytecode, or source) kept in memory per tenant: entries, and
/// bytes in all.
pub const MAX_CACHED_MODULES: usize = 4096;
pub const MAX_CACHED_MODULE_BYTES: usize = 64 << 20;

const EBADF: i32 = 9;
const EACCES: i32 = 13;
const EISDIR: i32 = 21;
const EINVAL: i32 = 22;
const EMFILE: i32 = 24;
const ENAMETOOLONG: i32 = 36;
const EIO: i32 = 5;

/// A directory the policy grants, opened once.
struct GrantedDir {
    /// Its real path, as the policy resolved it.
    path: PathBuf,
    /// Its own name (the last component), for chunk names and messages.
    name: String,
    dir: Result<Dir, String>,
}

impl GrantedDir {
    fn open(path: &Path, key: &str) -> GrantedDir {
        let dir = Dir::open_ambient_dir(path, cap_std::ambient_authority()).map_err(|error| {
            tracing::warn!(
                "[capabilities] {key}: {} cannot be opened: {error}",
                path.display()
            );
            os_message(&error)
        });
        GrantedDir {
            path: path.to_path_buf(),
            name: path
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_else(|| "lib".to_string()),
            dir,
        }
    }

    /// Open `relative` inside the directory, for reading, never leaving it.
    fn open_file(&self, relative: &Path) -> Result<std::fs::File, OpenError> {
        let dir = self
            .dir
            .as_ref()
            .map_err(|e| OpenError::Unavailable(e.clone()))?;
        let mut options = OpenOptions::new();
        options.read(true);
        // Never wait on a FIFO or become a terminal's controlling process.
        options.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
        match dir.open_with(relative, &options) {
            Ok(file) => Ok(file.into_std()),
            // cap-std's refusal of a path that leads out of the directory
            // (`..`, absolute, a symlink out): permission denied, no errno.
            Err(error)
                if error.kind() == std::io::ErrorKind::PermissionDenied
                    && error.raw_os_error().is_none() =>
            {
                Err(OpenError::Outside)
            }
            Err(error) => Err(OpenError::Io(error)),
        }
    }
}

enum OpenError {
    /// The granted directory itself could not be opened.
    Unavailable(String),
    /// The path leads outside the directory.
    Outside,
    Io(std::io::Error),
}

/// What compiling a module gave.
#[derive(Debug)]
pub enum Compiled {
    /// Its bytecode, debug information kept.
    Bytecode(Vec<u8>),
    /// It does not compile (a syntax error, or a limit reached compiling).
    Failed(String),
    /// It could not be compiled now (no instance free, ...): the guest gets
    /// the source this time.
    Unavailable(String),
}

/// Compiles modules for `require`: parse and dump only, in an instance that
/// runs none of the module (a server's sandbox,
/// [`crate::http::scripts::SandboxCompiler`]). The files capability holds
/// one without owning the sandbox.
pub trait ModuleCompiler: Send + Sync {
    /// Compile `source` as chunk `name` (`DIR/a/b.lua`, named `@DIR/a/b.lua`
    /// as Lua names files), taking at most `time`.
    fn compile<'a>(
        &'a self,
        name: &'a str,
        source: &'a [u8],
        time: Duration,
    ) -> Pin<Box<dyn Future<Output = Compiled> + Send + 'a>>;
}

impl std::fmt::Debug for dyn ModuleCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ModuleCompiler")
    }
}

/// The run's deadline passed while a module was being compiled for it.
#[derive(Debug)]
pub struct DeadlinePassed;

/// The directories and environment names a tenant may read.
#[derive(Default)]
pub struct Grant {
    read_dirs: Vec<GrantedDir>,
    lib_dirs: Vec<GrantedDir>,
    /// Granted names and their values, read when the policy was loaded.
    env: Vec<(String, Option<Vec<u8>>)>,
    modules: Mutex<ModuleCache>,
    /// Compiles modules once per version; without one, modules are handed
    /// over as source text.
    compiler: Option<Arc<dyn ModuleCompiler>>,
}

impl Grant {
    pub fn from_policy(capabilities: &Config, compiler: Option<Arc<dyn ModuleCompiler>>) -> Grant {
        Grant {
            read_dirs: capabilities
                .read_dirs
                .iter()
                .map(|path| GrantedDir::open(path, "read_dirs"))
                .collect(),
            lib_dirs: capabilities
                .lib_dirs
                .iter()
                .map(|path| GrantedDir::open(path, "lib_dirs"))
                .collect(),
            env: capabilities
                .env
                .iter()
                .map(|name| {
                    let value = std::env::var_os(name).map(|value| value.into_vec());
                    (name.clone(), value)
                })
                .collect(),
            modules: Mutex::default(),
            compiler,
        }
    }

    /// Open `path` (bytes from the guest) for reading, as `io.open` does.
    fn open(&self, path: &[u8]) -> Result<std::fs::File, wit::Failure> {
        if path.len() > MAX_PATH_BYTES {
            return Err(failure(
                format!("io.open: path too long (at most {MAX_PATH_BYTES} bytes)"),
                ENAMETOOLONG,
            ));
        }
        let shown = shown(path);
        if path.contains(&0) {
            return Err(failure(
                format!("io.open: {shown}: the path contains a zero byte"),
                EINVAL,
            ));
        }
        let denied = || {
            failure(
                format!(
                    "io.open: {shown} is not in a directory the policy grants ([capabilities] read_dirs)"
                ),
                EACCES,
            )
        };
        let path = Path::new(OsStr::from_bytes(path));
        let found = if path.is_absolute() {
            self.read_dirs.iter().find_map(|dir| {
                let relative = path.strip_prefix(&dir.path).ok()?;
                Some((dir, relative))
            })
        } else {
            self.read_dirs.first().map(|dir| (dir, path))
        };
        let Some((dir, relative)) = found else {
            return Err(denied());
        };
        let relative = if relative.as_os_str().is_empty() {
            Path::new(".")
        } else {
            relative
        };
        let file = match dir.open_file(relative) {
            Ok(file) => file,
            Err(OpenError::Outside) => return Err(denied()),
            Err(OpenError::Unavailable(error)) => {
                return Err(failure(
                    format!("io.open: {shown}: its granted directory cannot be opened ({error})"),
                    EIO,
                ));
            }
            Err(OpenError::Io(error)) => {
                return Err(failure(
                    format!("{shown}: {}", os_message(&error)),
                    error.raw_os_error().unwrap_or(EIO),
                ));
            }
        };
        let meta = file.metadata().map_err(|error| {
            failure(
                format!("{shown}: {}", os_message(&error)),
                error.raw_os_error().unwrap_or(EIO),
            )
        })?;
        if meta.is_dir() {
            return Err(failure(format!("{shown}: Is a directory"), EISDIR));
        }
        if !meta.is_file() {
            return Err(failure(
                format!("io.open: {shown} is not a regular file (only regular files can be read)"),
                EACCES,
            ));
        }
        Ok(file)
    }

    /// Find module `name` in the lib dirs, as `require` does: its bytecode
    /// (compiled once per file version) or its source. A compile waits at
    /// most until `deadline`, the run's.
    pub(crate) async fn find_module(
        &self,
        name: &[u8],
        deadline: Instant,
    ) -> Result<Result<wit::Module, wit::ModuleError>, DeadlinePassed> {
        let (file_name, found) = match self.locate_module(name) {
            Ok(found) => found,
            Err(error) => return Ok(Err(error)),
        };
        let code = match found {
            Found::Cached(code) => code,
            Found::Read { key, stamp, source } => {
                self.compile_module(&file_name, key, stamp, source, deadline)
                    .await?
            }
        };
        Ok(Ok(wit::Module {
            file: file_name,
            source: code.bytes.to_vec(),
            binary: code.binary,
        }))
    }

    /// The file of module `name`, as it is named to Lua (`DIR/a/b.lua`),
    /// and what the cache has of it, or its source read afresh.
    fn locate_module(&self, name: &[u8]) -> Result<(String, Found), wit::ModuleError> {
        if self.lib_dirs.is_empty() {
            return Err(wit::ModuleError::NotFound(
                "no lib_dirs granted (policy [capabilities] lib_dirs)".into(),
            ));
        }
        let Some(name) = module_name(name) else {
            return Err(wit::ModuleError::NotFound(format!(
                "'{}' is not a module name lib_dirs can hold (names of letters, digits, '_' and '-', separated by '.'; at most {MAX_MODULE_NAME_BYTES} bytes)",
                shown(name)
            )));
        };
        let base = name.replace('.', "/");
        let candidates = [format!("{base}.lua"), format!("{base}/init.lua")];
        let mut tried = Vec::new();
        for (index, dir) in self.lib_dirs.iter().enumerate() {
            for relative in &candidates {
                let file_name = format!("{}/{relative}", dir.name);
                let refused = |why: String| {
                    wit::ModuleError::Refused(format!(
                        "error loading module '{name}' from file '{file_name}':\n\t{why}"
                    ))
                };
                match dir.open_file(Path::new(relative)) {
                    Ok(file) => {
                        let found = self.load_module(index, relative, file).map_err(refused)?;
                        return Ok((file_name, found));
                    }
                    Err(OpenError::Io(error))
                        if matches!(
                            error.kind(),
                            std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                        ) =>
                    {
                        tried.push(format!("no file '{file_name}'"));
                    }
                    Err(OpenError::Unavailable(error)) => {
                        tried.push(format!("lib dir '{}' cannot be opened ({error})", dir.name));
                        break;
                    }
                    Err(OpenError::Outside) => {
                        return Err(refused(
                            "it leads outside its lib directory (refused)".into(),
                        ));
                    }
                    Err(OpenError::Io(error)) => return Err(refused(os_message(&error))),
                }
            }
        }
        Err(wit::ModuleError::NotFound(tried.join("\n\t")))
    }

    /// The module file open as `file`: from the cache when the file is
    /// unchanged, else its source, read and checked.
    fn load_module(
        &self,
        dir: usize,
        relative: &str,
        mut file: std::fs::File,
    ) -> Result<Found, String> {
        let meta = file.metadata().map_err(|e| os_message(&e))?;
        if !meta.is_file() {
            return Err("not a regular file".into());
        }
        let stamp: Stamp = (
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            meta.len(),
            meta.ino(),
        );
        let key = (dir, relative.to_string());
        if let Some(code) = self.cache().get(&key, stamp) {
            return Ok(Found::Cached(code));
        }
        let too_large = || format!("larger than {} MiB", MAX_MODULE_BYTES >> 20);
        if meta.len() > MAX_MODULE_BYTES {
            return Err(too_large());
        }
        // The size can change under us: read at most one byte past the cap.
        let mut source = Vec::with_capacity(meta.len() as usize);
        (&mut file)
            .take(MAX_MODULE_BYTES + 1)
            .read_to_end(&mut source)
            .map_err(|e| os_message(&e))?;
        if source.len() as u64 > MAX_MODULE_BYTES {
            return Err(too_large());
        }
        if source.first() == Some(&0x1b) {
            return Err(
                "binary chunks are not allowed in the moonwall sandbox (only Lua source text is loaded)"
                    .into(),
            );
        }
        Ok(Found::Read { key, stamp, source })
    }

    /// Compile a module version read afresh (with a compiler), cache what
    /// requests get of it, and return that: its bytecode, or its source
    /// when it does not compile (the guest reports the syntax error).
    async fn compile_module(
        &self,
        file_name: &str,
        key: (usize, String),
        stamp: Stamp,
        source: Vec<u8>,
        deadline: Instant,
    ) -> Result<ModuleCode, DeadlinePassed> {
        let as_source = |source: Vec<u8>| ModuleCode {
            bytes: source.into(),
            binary: false,
        };
        let code = match &self.compiler {
            None => as_source(source),
            Some(compiler) => {
                let time = deadline.saturating_duration_since(Instant::now());
                if time.is_zero() {
                    return Err(DeadlinePassed);
                }
                match compiler.compile(file_name, &source, time).await {
                    Compiled::Bytecode(bytecode) => ModuleCode {
                        bytes: bytecode.into(),
                        binary: true,
                    },
                    // The compile was cut short by the run's deadline.
                    Compiled::Failed(_) if Instant::now() >= deadline => {
                        return Err(DeadlinePassed);
                    }
                    Compiled::Failed(_) => as_source(source),
                    Compiled::Unavailable(why) => {
                        tracing::warn!("{file_name}: not compiled ({why}); loaded as source");
                        return Ok(as_source(source));
                    }
                }
            }
        };
        self.cache().insert(key, stamp, code.clone());
        Ok(code)
    }

    /// What the module cache holds now.
    pub fn module_cache_stats(&self) -> ModuleCacheStats {
        let cache = self.cache();
        ModuleCacheStats {
            modules: cache.entries.len(),
            compiled: cache.entries.values().filter(|e| e.code.binary).count(),
            bytes: cache.bytes,
            hits: cache.hits,
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, ModuleCache> {
        self.modules
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A file's identity for change detection: modification time, size, inode.
type Stamp = (SystemTime, u64, u64);

/// A module version as requests get it: bytecode a compile instance made,
/// or its source text.
#[derive(Clone)]
struct ModuleCode {
    bytes: Arc<[u8]>,
    binary: bool,
}

/// What a tenant's module cache holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModuleCacheStats {
    /// Module versions kept.
    pub modules: usize,
    /// How many of them are bytecode (the rest: source that did not compile,
    /// or with no compiler).
    pub compiled: usize,
    /// Bytes kept, in all.
    pub bytes: usize,
    /// Lookups answered from the cache.
    pub hits: u64,
}

/// A module's file, found: what the cache has of it, or its source read
/// afresh (to compile and cache under `key` and `stamp`).
enum Found {
    Cached(ModuleCode),
    Read {
        key: (usize, String),
        stamp: Stamp,
        source: Vec<u8>,
    },
}

struct CachedModule {
    stamp: Stamp,
    code: ModuleCode,
    last_used: u64,
}

/// Modules by (lib dir, relative path), each valid for one version of its
/// file; the least recently used go first past the bounds.
#[derive(Default)]
struct ModuleCache {
    entries: HashMap<(usize, String), CachedModule>,
    bytes: usize,
    uses: u64,
    hits: u64,
}

impl ModuleCache {
    fn get(&mut self, key: &(usize, String), stamp: Stamp) -> Option<ModuleCode> {
        self.uses += 1;
        let entry = self.entries.get_mut(key)?;
        if entry.stamp != stamp {
            return None;
        }
        entry.last_used = self.uses;
        self.hits += 1;
        Some(entry.code.clone())
    }

    fn insert(&mut self, key: (usize, String), stamp: Stamp, code: ModuleCode) {
        if let Some(old) = self.entries.remove(&key) {
            self.bytes -= old.code.bytes.len();
        }
        while !self.entries.is_empty()
            && (self.entries.len() >= MAX_CACHED_MODULES
                || self.bytes + code.bytes.len() > MAX_CACHED_MODULE_BYTES)
        {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, entry)| entry.last_used)
                .map(|(key, _)| key.clone());
            if let Some(oldest) = oldest
                && let Some(old) = self.entries.remove(&oldest)
            {
                self.bytes -= old.code.bytes.len();
            }
        }
        self.uses += 1;
        self.bytes += code.bytes.len();
        self.entries.insert(
            key,
            CachedModule {
                stamp,
                code,
                last_used: self.uses,
            },
        );
    }
}

/// `name` if it is a valid module name: `.`-separated parts of letters,
/// digits, `_` and `-`.
fn module_name(name: &[u8]) -> Option<&str> {
    let valid = !name.is_empty()
        && name.len() <= MAX_MODULE_NAME_BYTES
        && name.split(|&b| b == b'.').all(|part| {
            !part.is_empty()
                && part
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
    if valid {
        std::str::from_utf8(name).ok()
    } else {
        None
    }
}

/// A guest-given name or path for a message: lossy, at most 200 characters.
fn shown(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    match text.char_indices().nth(200) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.into_owned(),
    }
}

/// An I/O error as C's `strerror` says it (without Rust's "(os error N)").
fn os_message(error: &std::io::Error) -> String {
    let text = error.to_string();
    match text.rfind(" (os error ") {
        Some(at) if error.raw_os_error().is_some() => text[..at].to_string(),
        _ => text,
    }
}

fn failure(message: String, code: i32) -> wit::Failure {
    wit::Failure { message, code }
}

/// Per-run state: the run's open files.
#[derive(Default)]
pub struct State {
    open: HashMap<u32, std::fs::File>,
    last_id: u32,
}

impl State {
    fn file(&mut self, id: u32) -> Result<&mut std::fs::File, wit::Failure> {
        self.open
            .get_mut(&id)
            .ok_or_else(|| failure(format!("io: file {id} is not open"), EBADF))
    }
}

fn io_failure(error: std::io::Error) -> wit::Failure {
    failure(os_message(&error), error.raw_os_error().unwrap_or(EIO))
}

impl wit::Host for RunCaps {
    fn open(&mut self, path: Vec<u8>) -> wasmtime::Result<Result<u32, wit::Failure>> {
        if self.files.open.len() >= MAX_OPEN_FILES {
            return Ok(Err(failure(
                format!("io.open: too many open files (at most {MAX_OPEN_FILES} per run)"),
                EMFILE,
            )));
        }
        let file = match self.grants.files.open(&path) {
            Ok(file) => file,
            Err(error) => return Ok(Err(error)),
        };
        let state = &mut self.files;
        let mut id = state.last_id.wrapping_add(1).max(1);
        while state.open.contains_key(&id) {
            id = id.wrapping_add(1).max(1);
        }
        state.last_id = id;
        state.open.insert(id, file);
        Ok(Ok(id))
    }

    fn read(&mut self, file: u32, max: u32) -> wasmtime::Result<Result<Vec<u8>, wit::Failure>> {
        let file = match self.files.file(file) {
            Ok(file) => file,
            Err(error) => return Ok(Err(error)),
        };
        let max = max.min(MAX_READ_BYTES);
        let mut bytes = Vec::with_capacity(max as usize);
        Ok(file
            .take(max.into())
            .read_to_end(&mut bytes)
            .map(|_| bytes)
            .map_err(io_failure))
    }

    fn seek(
        &mut self,
        file: u32,
        whence: wit::Whence,
        offset: i64,
    ) -> wasmtime::Result<Result<u64, wit::Failure>> {
        let file = match self.files.file(file) {
            Ok(file) => file,
            Err(error) => return Ok(Err(error)),
        };
        let to = match whence {
            wit::Whence::Set => match u64::try_from(offset) {
                Ok(offset) => SeekFrom::Start(offset),
                Err(_) => return Ok(Err(failure("Invalid argument".into(), EINVAL))),
            },
            wit::Whence::Cur => SeekFrom::Current(offset),
            wit::Whence::End => SeekFrom::End(offset),
        };
        Ok(file.seek(to).map_err(io_failure))
    }

    fn close(&mut self, file: u32) -> wasmtime::Result<()> {
        self.files.open.remove(&file);
        Ok(())
    }

    async fn find_module(
        &mut self,
        name: Vec<u8>,
    ) -> wasmtime::Result<Result<wit::Module, wit::ModuleError>> {
        let grants = self.grants.clone();
        match grants.files.find_module(&name, self.deadline).await {
            Ok(found) => Ok(found),
            // The run is stopped there, as for any wait.
            Err(DeadlinePassed) => Err(self.deadline_passed()),
        }
    }
}

impl env_wit::Host for RunCaps {
    fn get(&mut self, name: Vec<u8>) -> wasmtime::Result<Result<Option<Vec<u8>>, String>> {
        Ok(
            match self
                .grants
                .files
                .env
                .iter()
                .find(|(granted, _)| granted.as_bytes() == name.as_slice())
            {
                Some((_, value)) => Ok(value.clone()),
                None => Err(format!(
                    "os.getenv: {} is not granted (policy [capabilities] env)",
                    shown(&name)
                )),
            },
        )
    }
}

/// The files capability's keys of a policy's `[capabilities]`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Section {
    /// Directories `io.open` and `io.lines` may read.
    read_dirs: Option<Vec<toml::Spanned<PathBuf>>>,
    /// Directories `require` loads modules from.
    lib_dirs: Option<Vec<toml::Spanned<PathBuf>>>,
    /// Environment variables `os.getenv` may see.
    env: Option<Vec<toml::Spanned<String>>>,
}

/// What a policy's files section checked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    /// Directories scripts may read (real paths, inside the allowed roots).
    pub read_dirs: Vec<PathBuf>,
    /// Directories `require` loads Lua modules from.
    pub lib_dirs: Vec<PathBuf>,
    /// Environment variables `os.getenv` may see.
    pub env: Vec<String>,
}

impl super::policy::PolicySection for Section {
    type Config = Config;

    fn apply(self, cx: &mut super::policy::PolicyContext) -> Config {
        let mut capabilities = Config::default();
        for (list, into) in [
            (&self.read_dirs, &mut capabilities.read_dirs),
            (&self.lib_dirs, &mut capabilities.lib_dirs),
        ] {
            for dir in list.iter().flatten() {
                let real =
                    crate::site::config::allowed_dir(dir, cx.base, cx.allowed_roots, cx.problems);
                into.extend(real);
            }
        }
        for name in self.env.iter().flatten() {
            if crate::site::config::valid_name(name.get_ref(), b"")
                && !name.get_ref().starts_with(|c: char| c.is_ascii_digit())
            {
                capabilities.env.push(name.get_ref().clone());
            } else {
                cx.problems.at(
                    name.span(),
                    format!("`{}` is not an environment variable name", name.get_ref()),
                );
            }
        }
        capabilities
    }
}

/// The capability: files to read, modules to `require`, environment variables.
pub struct Files;

impl super::Capability for Files {
    type Section = Section;
    type Config = Config;
    type Grant = Grant;
    type State = State;

    fn grant(
        _: &str,
        config: &Config,
        _: Option<&Grant>,
        settings: &super::CapsSettings,
    ) -> Result<Grant, String> {
        Ok(Grant::from_policy(config, settings.module_compiler.clone()))
    }

    fn add_to_linker<T: Send + 'static>(
        linker: &mut Linker<T>,
        get: super::Project<T>,
    ) -> wasmtime::Result<()> {
        wit::add_to_linker::<T, HasSelf<RunCaps>>(linker, get)?;
        env_wit::add_to_linker::<T, HasSelf<RunCaps>>(linker, get)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("moonwall-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.canonicalize().unwrap()
    }

    fn grant(read: &[&Path], lib: &[&Path]) -> Grant {
        grant_compiling(read, lib, None)
    }

    fn grant_compiling(
        read: &[&Path],
        lib: &[&Path],
        compiler: Option<Arc<dyn ModuleCompiler>>,
    ) -> Grant {
        Grant::from_policy(
            &Config {
                read_dirs: read.iter().map(|p| p.to_path_buf()).collect(),
                lib_dirs: lib.iter().map(|p| p.to_path_buf()).collect(),
                ..Config::default()
            },
            compiler,
        )
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    /// `find_module` with an hour to spare: the module, or the error.
    fn find(grant: &Grant, name: &[u8]) -> Result<wit::Module, wit::ModuleError> {
        crate::sandbox::block_on(grant.find_module(name, far())).expect("no deadline passes")
    }

    /// A compiler that "compiles" `X` to `\x1bLua` `X`, fails on sources
    /// starting with `bad`, is unavailable for `busy`, and counts calls.
    #[derive(Default)]
    struct FakeCompiler {
        calls: std::sync::atomic::AtomicUsize,
        names: Mutex<Vec<String>>,
    }

    impl ModuleCompiler for FakeCompiler {
        fn compile<'a>(
            &'a self,
            name: &'a str,
            source: &'a [u8],
            _time: Duration,
        ) -> Pin<Box<dyn Future<Output = Compiled> + Send + 'a>> {
            self.calls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.names.lock().unwrap().push(name.to_string());
            Box::pin(async move {
                if source.starts_with(b"bad") {
                    Compiled::Failed(format!("{name}:1: syntax error"))
                } else if source.starts_with(b"busy") {
                    Compiled::Unavailable("no instance free".into())
                } else {
                    Compiled::Bytecode([&b"\x1bLua"[..], source].concat())
                }
            })
        }
    }

    #[test]
    fn module_names() {
        assert_eq!(module_name(b"a"), Some("a"));
        assert_eq!(module_name(b"resty.http-x_1"), Some("resty.http-x_1"));
        for bad in [
            &b""[..],
            b".",
            b"a.",
            b".a",
            b"a..b",
            b"../a",
            b"a/b",
            b"/a",
            b"a b",
            b"a\0",
            "é".as_bytes(),
        ] {
            assert_eq!(module_name(bad), None, "{bad:?}");
        }
        assert_eq!(module_name(&[b'a'; 256]), None);
        assert!(module_name(&[b'a'; 255]).is_some());
    }

    #[test]
    fn absolute_paths_match_whole_components() {
        let root = temp_dir("prefix");
        std::fs::create_dir_all(root.join("data")).unwrap();
        std::fs::create_dir_all(root.join("database")).unwrap();
        std::fs::write(root.join("data/a.txt"), "a").unwrap();
        std::fs::write(root.join("database/b.txt"), "b").unwrap();
        let grant = grant(&[&root.join("data")], &[]);
        let inside = root.join("data/a.txt");
        assert!(grant.open(inside.as_os_str().as_bytes()).is_ok());
        let beside = root.join("database/b.txt");
        let error = grant.open(beside.as_os_str().as_bytes()).unwrap_err();
        assert_eq!(error.code, EACCES);
        assert!(
            error
                .message
                .contains("is not in a directory the policy grants")
        );
        let dotdot = root.join("data/../database/b.txt");
        let error = grant.open(dotdot.as_os_str().as_bytes()).unwrap_err();
        assert_eq!(error.code, EACCES, "{}", error.message);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn unchanged_modules_come_from_the_cache() {
        let root = temp_dir("cache");
        std::fs::write(root.join("m.lua"), "return 1").unwrap();
        let grant = grant(&[], &[&root]);
        let first = find(&grant, b"m").ok().unwrap();
        assert_eq!(first.source, b"return 1");
        assert!(!first.binary);
        assert_eq!(grant.cache().hits, 0);
        let again = find(&grant, b"m").ok().unwrap();
        assert_eq!(again.source, b"return 1");
        assert_eq!(grant.cache().hits, 1);
        // A new version (another inode and size) is read again.
        std::fs::write(root.join("m2.lua"), "return 22").unwrap();
        std::fs::rename(root.join("m2.lua"), root.join("m.lua")).unwrap();
        let changed = find(&grant, b"m").ok().unwrap();
        assert_eq!(changed.source, b"return 22");
        assert_eq!(grant.cache().hits, 1);
        assert_eq!(grant.cache().entries.len(), 1);
        assert_eq!(grant.cache().bytes, 9);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_module_cache_is_bounded() {
        let mut cache = ModuleCache::default();
        let stamp = (SystemTime::UNIX_EPOCH, 0, 0);
        let code = |bytes: Vec<u8>| ModuleCode {
            bytes: bytes.into(),
            binary: true,
        };
        let big = code(vec![b'x'; MAX_CACHED_MODULE_BYTES / 4 + 1]);
        for i in 0..8 {
            cache.insert((0, format!("m{i}")), stamp, big.clone());
            assert!(cache.bytes <= MAX_CACHED_MODULE_BYTES);
        }
        assert_eq!(cache.entries.len(), 3);
        // The most recently inserted are kept.
        assert!(cache.get(&(0, "m7".into()), stamp).is_some());
        assert!(cache.get(&(0, "m0".into()), stamp).is_none());
        let small = code(vec![b'y'; 1]);
        for i in 0..MAX_CACHED_MODULES + 10 {
            cache.insert((1, format!("s{i}")), stamp, small.clone());
        }
        assert_eq!(cache.entries.len(), MAX_CACHED_MODULES);
    }

    #[test]
    fn modules_are_compiled_once_per_version() {
        let root = temp_dir("compile");
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::write(root.join("a/m.lua"), "return 1").unwrap();
        let compiler = Arc::new(FakeCompiler::default());
        let grant = grant_compiling(&[], &[&root], Some(compiler.clone()));
        let dir = root.file_name().unwrap().to_string_lossy().into_owned();
        for _ in 0..3 {
            let module = find(&grant, b"a.m").ok().unwrap();
            assert!(module.binary);
            assert_eq!(module.source, b"\x1bLuareturn 1");
            assert_eq!(module.file, format!("{dir}/a/m.lua"));
        }
        assert_eq!(compiler.calls.load(std::sync::atomic::Ordering::Relaxed), 1);
        // Named as Lua will name the chunk.
        assert_eq!(*compiler.names.lock().unwrap(), [format!("{dir}/a/m.lua")]);
        std::fs::write(root.join("a/m2.lua"), "return 22").unwrap();
        std::fs::rename(root.join("a/m2.lua"), root.join("a/m.lua")).unwrap();
        assert_eq!(
            find(&grant, b"a.m").ok().unwrap().source,
            b"\x1bLuareturn 22"
        );
        assert_eq!(
            find(&grant, b"a.m").ok().unwrap().source,
            b"\x1bLuareturn 22"
        );
        assert_eq!(compiler.calls.load(std::sync::atomic::Ordering::Relaxed), 2);

        // A module that does not compile is handed over as source (the
        // guest reports the error), once compiled and then cached so.
        std::fs::write(root.join("bad.lua"), "bad = = 1").unwrap();
        for _ in 0..2 {
            let module = find(&grant, b"bad").ok().unwrap();
            assert!(!module.binary);
            assert_eq!(module.source, b"bad = = 1");
        }
        assert_eq!(compiler.calls.load(std::sync::atomic::Ordering::Relaxed), 3);

        // Without an instance free, source this time, compiled next time.
        std::fs::write(root.join("busy.lua"), "busy()").unwrap();
        for _ in 0..2 {
            assert!(!find(&grant, b"busy").ok().unwrap().binary);
        }
        assert_eq!(compiler.calls.load(std::sync::atomic::Ordering::Relaxed), 5);

        // Binary files are refused before any compile.
        std::fs::write(root.join("bin.lua"), b"\x1bLuaT\0").unwrap();
        assert!(matches!(
            find(&grant, b"bin"),
            Err(wit::ModuleError::Refused(message)) if message.contains("binary chunks are not allowed")
        ));
        assert_eq!(compiler.calls.load(std::sync::atomic::Ordering::Relaxed), 5);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_compile_after_the_deadline_stops_the_run() {
        let root = temp_dir("deadline");
        std::fs::write(root.join("m.lua"), "return 1").unwrap();
        let compiler = Arc::new(FakeCompiler::default());
        let grant = grant_compiling(&[], &[&root], Some(compiler.clone()));
        let past = Instant::now() - Duration::from_millis(1);
        assert!(crate::sandbox::block_on(grant.find_module(b"m", past)).is_err());
        assert_eq!(compiler.calls.load(std::sync::atomic::Ordering::Relaxed), 0);
        // Lookups that fail without compiling are answered as usual.
        let missing = crate::sandbox::block_on(grant.find_module(b"none", past));
        assert!(matches!(missing, Ok(Err(wit::ModuleError::NotFound(_)))));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
