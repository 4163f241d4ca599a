//! The prepared guest: the guest component pre-initialized by running its
//! `prepare` export once, under wasmtime-wizer, and snapshotting the result.
//!
//! `prepare` builds the Lua state every HTTP request needs (the libraries and
//! the `ngx` API: about 18 M fuel and 2.6 ms when done per request). In the
//! snapshot that state is part of the guest's initial memory, which each
//! request's fresh instance maps copy-on-write; the request starts from it.
//!
//! What a snapshot fixes for the life of the cache entry, and what is redone
//! per request:
//! - Lua's string-hash seed is drawn from host entropy once, at preparation.
//! - `math.random` is reseeded from host entropy at the start of every request.
//! - Nothing of a request is in the snapshot: `prepare` runs no script.

use wasmtime::component::Linker;
use wasmtime::{Config, Engine, Store};

use super::host_api::{CapturedOutput, RunBase};
use super::{CpuSlots, RunData, RunStart, SandboxError};

/// The guest component after `prepare`, as component bytes, for a sandbox
/// whose runs' store holds a `D`.
pub(crate) fn prepared_guest<D: RunData>(guest: &[u8]) -> Result<Vec<u8>, SandboxError> {
    let failed = |what: &str, error: wasmtime::Error| {
        SandboxError::Engine(format!("preparing the guest: {what}: {error:#}"))
    };
    // A plain engine: preparation runs moonwall's own code only, once.
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.wasm_exceptions(true);
    let engine = Engine::new(&config).map_err(|e| failed("engine", e))?;
    let mut linker = Linker::<D>::new(&engine);
    super::add_to_linker(&mut linker).map_err(|e| failed("linker", e))?;
    let base = RunBase::new(usize::MAX, 0, Box::new(CapturedOutput::default()));
    let start = RunStart {
        deadline: std::time::Instant::now(),
        time_limit: std::time::Duration::ZERO,
        cpu: CpuSlots::default(),
    };
    let state = D::assemble(base, D::Setup::default(), start);
    let mut store = Store::new(&engine, state);

    let mut wizer = wasmtime_wizer::Wizer::new();
    wizer.init_func("prepare");
    // Keep the export, so the snapshot still has the whole world's exports.
    wizer.keep_init_func(true);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| SandboxError::Engine(format!("preparing the guest: {e}")))?;
    let (snapshot, _) = runtime
        .block_on(
            wizer.run_component(&mut store, guest, async |store, component| {
                linker.instantiate_async(store, component).await
            }),
        )
        .map_err(|e| failed("snapshot", e))?;
    Ok(snapshot)
}
