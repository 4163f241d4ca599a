//! The on-disk cache of compiled guest code.
//!
//! Compiling the guest with Cranelift takes a noticeable fraction of a second;
//! loading compiled code takes microseconds. Entries are keyed by the guest's
//! content hash and the engine's compatibility hash (wasmtime version and
//! every setting that affects code), so a stale entry is never used.
//!
//! The cache is bounded: past [`MAX_ENTRIES`] entries (older moonwall or
//! engine versions), the least recently used are deleted.
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
pub(crate) fn load_or_compile<D: super::RunData>(
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
            // Mark it used, for the LRU bound.
            if let Ok(file) = std::fs::File::options().append(true).open(path) {
                let _ = file.set_modified(std::time::SystemTime::now());
            }
            return Ok(component);
        }
    }
    let prepared = super::snapshot::prepared_guest::<D>(moonwall_guest::COMPONENT)?;
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
        if let Some(dir) = path.parent() {
            prune(dir, MAX_ENTRIES);
        }
    }
    Ok(component)
}

/// Entries kept in the cache directory; the least recently used beyond
/// this are deleted when a new one is written.
pub const MAX_ENTRIES: usize = 8;

/// Delete all but the `keep` most recently used entries of `dir`.
fn prune(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.starts_with("prepared-guest-") && name.ends_with(".cwasm")
        })
        .filter_map(|entry| Some((entry.metadata().ok()?.modified().ok()?, entry.path())))
        .collect();
    found.sort_by_key(|(used, _)| std::cmp::Reverse(*used));
    for (_, path) in found.into_iter().skip(keep) {
        let _ = std::fs::remove_file(path);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_keeps_the_most_recently_used() {
        let dir = std::env::temp_dir().join(format!("moonwall-cache-prune-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let base = std::time::SystemTime::now() - std::time::Duration::from_secs(100);
        for i in 0..5u64 {
            let path = dir.join(format!("prepared-guest-{i}-0.cwasm"));
            let file = std::fs::File::create(&path).unwrap();
            file.set_modified(base + std::time::Duration::from_secs(i))
                .unwrap();
        }
        std::fs::write(dir.join("unrelated.txt"), b"x").unwrap();
        prune(&dir, 2);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "prepared-guest-3-0.cwasm",
                "prepared-guest-4-0.cwasm",
                "unrelated.txt"
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
