//! A tenant's prepared state (OpenResty's `init_by_lua`): the prepared guest
//! (see [`super::snapshot`]) after the tenant's init script ran in it,
//! snapshotted, so that each of the tenant's requests starts from what the
//! script left (its globals, the modules it required, their tables) instead
//! of building it again.
//!
//! How one is made, once per tenant version ([`Sandbox::prepare_tenant`]):
//! 1. the guest, instrumented by wasmtime-wizer so that its state can be
//!    read, is compiled once per process (about a second);
//! 2. a run of it, under the tenant's limits and grants like any other run
//!    (fuel, deadline, memory cap; no waiting), calls `prepare` (on fuel of
//!    its own) and then `init` with the script;
//! 3. wizer snapshots the instance's memory and globals into a new component;
//! 4. the engine compiles it: its functions are the guest's own, so
//!    Cranelift's incremental cache (engine.rs) makes this cheap after the
//!    first time; the memory image is the tenant's.
//!
//! The isolation promise holds: every request still gets a fresh instance,
//! and the snapshot holds only what the init script did, never a request.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Instance};

use super::run::{RunData, RunSetup};
use super::{Limit, Limits, Outcome, Sandbox, SandboxError, lossy};
use crate::bindings::SandboxPre;
use crate::bindings::moonwall::sandbox::http_types::Source;

/// A guest to instantiate runs from: the sandbox's own, or a tenant's
/// prepared state.
pub struct PreparedGuest<D: RunData> {
    pub(crate) pre: SandboxPre<D>,
    /// Size of the snapshot's component (its code and its memory image).
    pub component_bytes: usize,
    /// Fuel the init script used.
    pub init_fuel: u64,
    /// How long the init script ran, and how long the snapshot took to make
    /// and compile.
    pub init_time: Duration,
    pub compile_time: Duration,
}

impl<D: RunData> std::fmt::Debug for PreparedGuest<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedGuest")
            .field("component_bytes", &self.component_bytes)
            .field("init_fuel", &self.init_fuel)
            .field("init_time", &self.init_time)
            .field("compile_time", &self.compile_time)
            .finish()
    }
}

/// Why a tenant's init script did not leave a state to start from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InitError {
    /// A Lua error (or a syntax error) in the script: `script:line: text`.
    #[error("{message}")]
    Lua { message: String, traceback: String },
    /// A limit stopped it.
    #[error("{0}")]
    Limit(Limit),
    /// The guest faulted, or the snapshot could not be made or compiled.
    #[error("{0}")]
    Failed(String),
}

/// The guest, instrumented so that wizer can read its state: what every
/// tenant's init runs in (after `prepare`). Built on first use.
///
/// It is the guest itself, not the prepared snapshot, that is instrumented:
/// a snapshot of a snapshot would carry the first one's ten thousand data
/// segments as passive segments, which every instantiation then walks
/// (measured: a hello 120 → 190 µs).
pub(crate) struct Instrumented<D: RunData> {
    guest: Arc<PreparedGuest<D>>,
}

/// The lazily built [`Instrumented`] guest of a sandbox.
pub(crate) struct InstrumentedSlot<D: RunData>(Mutex<Option<Arc<Instrumented<D>>>>);

impl<D: RunData> Default for InstrumentedSlot<D> {
    fn default() -> Self {
        InstrumentedSlot(Mutex::new(None))
    }
}

fn wizer() -> wasmtime_wizer::Wizer {
    let mut wizer = wasmtime_wizer::Wizer::new();
    // No init function is named: the snapshot keeps every export.
    wizer.keep_init_func(true);
    wizer
}

impl<D: RunData> Sandbox<D> {
    /// Run `script` as a tenant's init script under `limits`, with `setup`
    /// (what the script may use: the tenant's grants, nothing that waits),
    /// and make the state it leaves the start of every run given the result
    /// ([`RunSetup::guest`]). Blocks while the snapshot compiles.
    /// `Ok(Err(..))` when the script failed.
    pub async fn prepare_tenant(
        &self,
        script: Source,
        limits: &Limits,
        setup: D::Setup,
    ) -> Result<Result<Arc<PreparedGuest<D>>, InitError>, SandboxError> {
        self.check_limits(limits)?;
        let instrumented = self.instrumented()?;
        let output = Box::new(InitOutput {
            name: script.name.clone(),
        });
        let mut run_setup = RunSetup::plain(limits, output);
        run_setup.setup = setup;
        run_setup.guest = Some(instrumented.guest.clone());
        let mut run = self.start_checked_run(run_setup).await;
        let mut snapshot = None;
        let called = match run.instantiate_instance().await {
            Ok(instance) => match crate::bindings::Sandbox::new(&mut run.store, &instance) {
                Ok(guest) => {
                    let result = match prepare(&guest, &mut run.store, limits.fuel).await {
                        Ok(()) => {
                            guest
                                .moonwall_sandbox_http_handler()
                                .call_init(&mut run.store, &script)
                                .await
                        }
                        Err(error) => Err(error),
                    };
                    if let Ok(Ok(())) = &result {
                        // Before the run ends: the store goes with it.
                        snapshot = Some(snapshot_of(&mut run.store, instance).await);
                    }
                    result
                }
                Err(error) => Err(error),
            },
            Err(error) => Err(error),
        };
        let finished = run.finish(called)?;
        match finished.result {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                return Ok(Err(InitError::Lua {
                    message: lossy(&error.message),
                    traceback: lossy(&error.traceback),
                }));
            }
            Err(Outcome::LimitExceeded(limit)) => return Ok(Err(InitError::Limit(limit))),
            Err(other) => return Ok(Err(InitError::Failed(other.to_string()))),
        }
        let snapshot = match snapshot {
            Some(Ok(bytes)) => bytes,
            Some(Err(error)) => {
                return Ok(Err(InitError::Failed(format!(
                    "cannot snapshot the state it left: {error:#}"
                ))));
            }
            None => unreachable!("every init that returned is snapshotted"),
        };
        let compiling = Instant::now();
        let pre = self.link(&snapshot)?;
        Ok(Ok(Arc::new(PreparedGuest {
            pre,
            component_bytes: snapshot.len(),
            init_fuel: finished.fuel_used,
            init_time: finished.duration,
            compile_time: compiling.elapsed(),
        })))
    }

    /// Compile and link component bytes against this sandbox's host.
    pub(crate) fn link(&self, component: &[u8]) -> Result<SandboxPre<D>, SandboxError> {
        let component = Component::new(&self.engine, component)
            .map_err(|e| SandboxError::Engine(format!("compiling a prepared guest: {e}")))?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| SandboxError::Engine(format!("linking the guest: {e}")))?;
        SandboxPre::new(pre)
            .map_err(|e| SandboxError::Engine(format!("the guest does not match wit/: {e}")))
    }

    /// The instrumented guest, built on first use.
    fn instrumented(&self) -> Result<Arc<Instrumented<D>>, SandboxError> {
        let mut slot = self
            .instrumented
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(instrumented) = &*slot {
            return Ok(instrumented.clone());
        }
        let started = Instant::now();
        let (_, instrumented_bytes) = wizer()
            .instrument_component(moonwall_guest::COMPONENT)
            .map_err(|e| SandboxError::Engine(format!("instrumenting the guest: {e:#}")))?;
        let pre = self.link(&instrumented_bytes)?;
        tracing::debug!(
            "instrumented guest ready for init scripts in {:?}",
            started.elapsed()
        );
        let instrumented = Arc::new(Instrumented {
            guest: Arc::new(PreparedGuest {
                pre,
                component_bytes: instrumented_bytes.len(),
                init_fuel: 0,
                init_time: Duration::ZERO,
                compile_time: started.elapsed(),
            }),
        });
        *slot = Some(instrumented.clone());
        Ok(instrumented)
    }
}

/// Build the prepared state (the guest's `prepare`: libraries, `ngx` API) in
/// the init's instance, on fuel of its own (moonwall's code, not the
/// tenant's), then give the run its own budget back for the init script.
async fn prepare<D: RunData>(
    guest: &crate::bindings::Sandbox,
    store: &mut wasmtime::Store<D>,
    fuel: u64,
) -> wasmtime::Result<()> {
    store.set_fuel(PREPARE_FUEL)?;
    guest.call_prepare(&mut *store).await?;
    store.set_fuel(fuel)?;
    Ok(())
}

/// Fuel for the guest's `prepare` (it takes about 18 million).
const PREPARE_FUEL: u64 = 1_000_000_000;

/// The state of the init's instance in `store`, as a component: wizer reads
/// it through small exports of the instrumented guest (moonwall's own code,
/// run on fuel of their own, so that an init that used nearly all of its
/// budget can still be snapshotted).
async fn snapshot_of<D: RunData>(
    store: &mut wasmtime::Store<D>,
    instance: Instance,
) -> wasmtime::Result<Vec<u8>> {
    let fuel_left = store.get_fuel()?;
    store.set_fuel(SNAPSHOT_FUEL)?;
    let wizer = wizer();
    let (context, _) = wizer.instrument_component(moonwall_guest::COMPONENT)?;
    let mut state = wasmtime_wizer::WasmtimeWizerComponent {
        store: &mut *store,
        instance,
    };
    let snapshot = wizer.snapshot_component(&context, &mut state).await;
    store.set_fuel(fuel_left)?;
    snapshot
}

/// Fuel for reading an instance's state: a few calls that copy memory out.
const SNAPSHOT_FUEL: u64 = 1_000_000_000;

/// `print` and warnings of an init script go to the server's log.
struct InitOutput {
    name: String,
}

impl super::OutputSink for InitOutput {
    fn write(&mut self, _stream: super::host_api::Stream, bytes: &[u8]) {
        let text = bytes.trim_ascii_end();
        if !text.is_empty() {
            let text = super::log_text::escape(text);
            tracing::warn!(script = %self.name.trim_start_matches('@'), "{text}");
        }
    }
}
