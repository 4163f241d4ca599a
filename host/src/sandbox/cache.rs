//! The on-disk cache of compiled guest code.
//!
//! Compiling the guest with Cranelift takes a noticeable fraction of a second;
//! loading compiled code takes microseconds. Entries are keyed by the guest's
//! content hash and the engine's compatibility hash (wasmtime version and
//! every setting that affects code), so a stale entry is never used.
//!
//! Loading compiled code means trusting it as native code, so the cache
//! directory must be private to this user: it is created with mode 0700, and
//! a directory that others can write to is not used.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

use super::SandboxError;

/// `$MOONWALL_CACHE_DIR`, else `$XDG_CACHE_HOME/moonwall`, else
/// `$HOME/.cache/moonwall`.
pub fn default_dir() -> Option<PathBuf> {
    let from_env = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    from_env("MOONWALL_CACHE_DIR")
        .or_else(|| from_env("XDG_CACHE_HOME").map(|dir| dir.join("moonwall")))
        .or_else(|| from_env("HOME").map(|home| home.join(".cache/moonwall")))
}

/// The compiled, prepared guest (see [`super::snapshot`]): from the cache
/// when a matching entry is there, otherwise prepared and compiled now and
/// stored for next time. A cache that cannot be used never fails the load;
/// it only costs the preparation and a compile.
pub(crate) fn load_or_compile(
    engine: &Engine,
    cache_dir: Option<&Path>,
) -> Result<Component, SandboxError> {
    let entry = cache_dir.and_then(|dir| private_dir(dir).map(|dir| dir.join(entry_name(engine))));
    if let Some(path) = &entry
        && path.exists()
    {
        // SAFETY: the entry was written by `Component::serialize` of this
        // same engine configuration (its name carries the compatibility hash)
        // into a directory only this user can write.
        if let Ok(component) = unsafe { Component::deserialize_file(engine, path) } {
            return Ok(component);
        }
    }
    let prepared = super::snapshot::prepared_guest(moonwall_guest::COMPONENT)?;
    let component = Component::new(engine, &prepared)
        .map_err(|e| SandboxError::Engine(format!("compiling the guest: {e}")))?;
    if let Some(path) = &entry
        && let Ok(bytes) = component.serialize()
    {
        // Write-then-rename, so a concurrent reader never sees half a file.
        let temporary = path.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&temporary, bytes).is_ok() && std::fs::rename(&temporary, path).is_err() {
            let _ = std::fs::remove_file(&temporary);
        }
    }
    Ok(component)
}

fn entry_name(engine: &Engine) -> String {
    let mut hasher = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!(
        "prepared-guest-{}-{:016x}.cwasm",
        moonwall_guest::COMPONENT_HASH,
        hasher.finish()
    )
}

/// `dir`, created if needed, if only this user can write to it.
fn private_dir(dir: &Path) -> Option<&Path> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .ok()?;
    }
    let meta = std::fs::metadata(dir).ok()?;
    // This process's own uid, without unsafe code: /proc/self belongs to it.
    let uid = std::fs::metadata("/proc/self").ok()?.uid();
    let others_can_write = meta.mode() & 0o022 != 0;
    (meta.is_dir() && meta.uid() == uid && !others_can_write).then_some(dir)
}
