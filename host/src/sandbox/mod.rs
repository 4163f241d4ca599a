//! The sandbox: run untrusted Lua in a fresh, limited wasm instance.
//!
//! - [`engine`]: the engine configuration and every limit (fuel, time, memory,
//!   native stack, output, pooling).
//! - [`fuel_pool`]: fuel shared by a group of runs (a request and its
//!   subrequests).
//! - [`host_api`]: the sandbox's part of a run's store ([`RunBase`]) and the
//!   core imports (output, clock, guard).
//! - [`log_text`]: guest text escaped and cut before it reaches a log.
//! - [`memory_pool`]: memory shared by a group of runs (a request and its
//!   subrequests) and the host's copies between them.
//! - [`meter`]: host work paid for with the run's fuel and stopped at its
//!   deadline ([`HostWork`]).
//! - [`outcome`]: how a run ended, as a typed result.
//! - [`run`]: the one lifecycle of a run (start with every limit armed,
//!   instantiate, call, classify the stop), used by every kind of run, and
//!   [`RunData`], what the layers above put in a run's store.
//! - [`cpu`]: the CPU slots a run holds while its guest code executes, given
//!   back while it waits on the host.
//! - [`snapshot`]: the guest pre-initialized once (libraries and the `ngx`
//!   API built) and snapshotted, so requests start from that state.
//! - [`prepared`]: a tenant's init script run in that state and snapshotted
//!   again, so the tenant's requests start from what it left.
//! - [`cache`]: compiled guest code cached on disk.
//! - [`bytecode`]: what the host accepts as a compiled Lua chunk.
//!
//! A [`Sandbox`] compiles the guest once and pre-links it (`InstancePre`);
//! [`Sandbox::run`] then instantiates it afresh for every run, so no state is
//! ever shared between runs.
//!
//! This is the bottom layer above the bindings: it knows nothing of
//! capabilities, requests or tenants. A sandbox is generic over its store's
//! data ([`RunData`]): the layer that assembles that data (`crate::runtime`)
//! links the capabilities' host functions to it, each by a projection.

pub mod bytecode;
pub mod cache;
pub mod cpu;
pub mod engine;
pub mod fuel_pool;
pub mod host_api;
pub mod log_text;
pub mod memory_pool;
pub mod meter;
pub mod outcome;
pub mod prepared;
pub mod run;
pub mod snapshot;

use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Engine, Trap};

pub use cpu::CpuSlots;
pub use engine::{EngineSettings, Limits};
pub use fuel_pool::FuelPool;
pub use host_api::{CapturedOutput, InheritedOutput, OutputSink, RunBase};
pub use memory_pool::MemoryPool;
pub use meter::HostWork;
pub use outcome::{Limit, Outcome, RunReport};
pub use prepared::{InitError, PreparedGuest};
pub use run::{RunData, RunStart};

use crate::bindings::exports::moonwall::sandbox::script;
use engine::EpochTicker;
use host_api::HostStop;
use run::RunSetup;

/// What can keep the sandbox from running a script at all. (How a script
/// ends, limits included, is an [`Outcome`], not an error.)
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("invalid limits: {0}")]
    InvalidLimits(String),
    #[error("wasm engine: {0}")]
    Engine(String),
    #[error("cannot instantiate the guest: {0}")]
    Instantiate(String),
}

/// A Lua program: chunks run in order in one state; the last is the script.
#[derive(Debug, Clone, Default)]
pub struct Program {
    chunks: Vec<script::Chunk>,
    args: Vec<String>,
}

impl Program {
    /// A program of one script, reported as `name` in messages (as Lua's
    /// `@name`: `name:line: message`).
    pub fn script(name: &str, source: impl Into<Vec<u8>>) -> Self {
        Program::default().then_script(name, source)
    }

    /// Add a chunk run before the script, reported as `=name`, like `lua -e`.
    pub fn prelude(mut self, name: &str, source: impl Into<Vec<u8>>) -> Self {
        let chunk = script::Chunk {
            name: format!("={name}"),
            source: source.into(),
        };
        self.chunks.push(chunk);
        self
    }

    /// Add the script (a file), run last, reported as `name`.
    pub fn then_script(mut self, name: &str, source: impl Into<Vec<u8>>) -> Self {
        let chunk = script::Chunk {
            name: format!("@{name}"),
            source: source.into(),
        };
        self.chunks.push(chunk);
        self
    }

    /// Arguments of the script: `...` and `arg[1..]`.
    pub fn with_args(mut self, args: Vec<String>) -> Self {
        self.args = args;
        self
    }
}

/// Runs Lua programs, each in a fresh instance of the guest, with `D` as
/// the data of each run's store.
pub struct Sandbox<D: RunData> {
    engine: Engine,
    pub(crate) pre: crate::bindings::SandboxPre<D>,
    pub(crate) linker: Linker<D>,
    pub(crate) instrumented: prepared::InstrumentedSlot<D>,
    pub(crate) settings: EngineSettings,
    /// A place in the instance pool for each run: a run waits for one
    /// (until its deadline) rather than failing when the pool is full.
    pub(crate) instances: Arc<tokio::sync::Semaphore>,
    // Last: stops the ticker thread when the sandbox is dropped.
    ticker: EpochTicker,
}

/// Instances of the pool kept for runs outside a request (a tenant's init
/// script and its snapshot), which take no place in [`Sandbox::instances`].
const INSTANCES_KEPT_FOR_INIT: u32 = 4;

impl<D: RunData> std::fmt::Debug for Sandbox<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl<D: RunData> Sandbox<D> {
    /// Build the engine, load (or compile and cache) the guest and pre-link
    /// it. Done once per process.
    pub fn new(settings: EngineSettings) -> Result<Self, SandboxError> {
        let engine = engine::build_engine(&settings)?;
        let component = cache::load_or_compile::<D>(&engine, settings.cache_dir.as_deref())?;
        let mut linker = Linker::new(&engine);
        add_to_linker(&mut linker).map_err(|e| SandboxError::Engine(e.to_string()))?;
        let instance_pre = linker
            .instantiate_pre(&component)
            .map_err(|e| SandboxError::Engine(format!("linking the guest: {e}")))?;
        let pre = crate::bindings::SandboxPre::new(instance_pre)
            .map_err(|e| SandboxError::Engine(format!("the guest does not match wit/: {e}")))?;
        let ticker = EpochTicker::start(engine.clone(), settings.epoch_tick)?;
        Ok(Sandbox {
            engine,
            pre,
            linker,
            instrumented: prepared::InstrumentedSlot::default(),
            instances: Arc::new(tokio::sync::Semaphore::new(
                settings
                    .max_instances
                    .saturating_sub(INSTANCES_KEPT_FOR_INIT)
                    .max(1) as usize,
            )),
            settings,
            ticker,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The names of everything the guest imports: what it can reach outside
    /// itself. Only `moonwall:sandbox/*` interfaces, by construction.
    pub fn guest_imports(&self) -> Vec<String> {
        let component = self.pre.instance_pre().component();
        component
            .component_type()
            .imports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect()
    }

    /// Run `program` in a fresh instance under `limits`, its output going to
    /// `output`. Returns how it ended, and the sink. Blocks the calling
    /// thread; [`Sandbox::run_async`] is the same run as a future.
    pub fn run<S: OutputSink + 'static>(
        &self,
        program: &Program,
        limits: &Limits,
        output: S,
    ) -> Result<(RunReport, S), SandboxError> {
        block_on(self.run_async(program, limits, output))
    }

    /// Run `program` as a future: guest code yields to the executor at every
    /// epoch tick, so many runs can share a thread fairly.
    pub async fn run_async<S: OutputSink + 'static>(
        &self,
        program: &Program,
        limits: &Limits,
        output: S,
    ) -> Result<(RunReport, S), SandboxError> {
        let (report, sink) = self.run_boxed(program, limits, Box::new(output)).await?;
        // The box holds the `S` we were given.
        let sink = downcast_sink::<S>(sink);
        Ok((report, sink))
    }

    /// Compile `source` as the Lua script `name` in a fresh instance, running
    /// nothing of it: `Ok(Ok(bytecode))` if it compiles (the binary chunk,
    /// with its debug information, that requests may load instead of the
    /// source), `Ok(Err(message))` with its syntax error (`name:line: text`)
    /// if not. A limit reached while compiling, or bytecode the host does
    /// not accept ([`bytecode::check`]), is reported as the error.
    pub async fn compile(
        &self,
        name: &str,
        source: &[u8],
        limits: &Limits,
    ) -> Result<Result<Vec<u8>, String>, SandboxError> {
        let output = Box::new(CapturedOutput::default());
        let mut run = self.start_run(RunSetup::plain(limits, output)).await?;
        let chunk = script::Chunk {
            name: format!("@{name}"),
            source: source.to_vec(),
        };
        let result = match run.instantiate().await {
            Ok(guest) => {
                guest
                    .moonwall_sandbox_script()
                    .call_compile(&mut run.store, &chunk)
                    .await
            }
            Err(error) => Err(error),
        };
        match run.finish(result)?.result {
            Ok(Ok(bytecode)) => Ok(bytecode::check(name, bytecode)),
            Ok(Err(message)) => Ok(Err(lossy(&message))),
            Err(Outcome::LimitExceeded(limit)) => Ok(Err(format!("{name}: {limit}"))),
            Err(other) => Err(SandboxError::Instantiate(other.to_string())),
        }
    }

    /// Create a fresh instance under `limits` and drop it, running nothing:
    /// the fixed cost of isolation, for benchmarks.
    #[doc(hidden)]
    pub fn instantiate_and_drop(&self, limits: &Limits) -> Result<(), SandboxError> {
        let output = Box::new(CapturedOutput::default());
        block_on(async {
            let mut run = self.start_run(RunSetup::plain(limits, output)).await?;
            let result = run.instantiate().await.map(drop);
            match run.finish(result)?.result {
                Ok(()) => Ok(()),
                Err(stop) => Err(SandboxError::Instantiate(stop.to_string())),
            }
        })
    }

    /// Run `program` with its output captured in memory.
    pub fn run_captured(
        &self,
        program: &Program,
        limits: &Limits,
    ) -> Result<(RunReport, CapturedOutput), SandboxError> {
        self.run(program, limits, CapturedOutput::default())
    }

    async fn run_boxed(
        &self,
        program: &Program,
        limits: &Limits,
        output: Box<dyn OutputSink>,
    ) -> Result<(RunReport, Box<dyn OutputSink>), SandboxError> {
        let mut run = self.start_run(RunSetup::plain(limits, output)).await?;
        let result = match run.instantiate().await {
            Ok(guest) => guest
                .moonwall_sandbox_script()
                .call_run(&mut run.store, &program.chunks, &program.args)
                .await
                .map(from_guest),
            Err(error) => Err(error),
        };
        let finished = run.finish(result)?;
        let report = RunReport {
            outcome: finished.result.unwrap_or_else(|stop| stop),
            fuel_used: finished.fuel_used,
            peak_memory_bytes: finished.peak_memory_bytes,
            duration: finished.duration,
        };
        Ok((report, finished.state.into_base().into_output()))
    }
}

/// Register every host function the guest may import: the core interfaces
/// (on the store's [`RunBase`]), then the rest ([`RunData::add_to_linker`]).
pub(crate) fn add_to_linker<D: RunData>(linker: &mut Linker<D>) -> wasmtime::Result<()> {
    use crate::bindings::moonwall::sandbox::{clock, guard, output};
    output::add_to_linker::<D, HasSelf<RunBase>>(linker, D::base_mut)?;
    clock::add_to_linker::<D, HasSelf<RunBase>>(linker, D::base_mut)?;
    guard::add_to_linker::<D, HasSelf<RunBase>>(linker, D::base_mut)?;
    D::add_to_linker(linker)
}

/// Drive `future` to completion on this thread. Guest runs are futures only
/// so that they can yield; they wait on nothing but themselves (and, in a
/// server, the response channel), so parking the thread between polls is
/// all the executor a blocking caller needs.
pub fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    // Capabilities wait on tokio's timers and sockets: their drivers run on
    // a background runtime's thread, whatever thread this is.
    let _runtime = background_runtime().enter();
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::thread::park();
    }
}

/// A small tokio runtime for runs driven by [`block_on`] (outside a server):
/// one worker thread drives the timers and sockets of their capabilities.
fn background_runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("moonwall-io")
            .enable_all()
            .build()
            .expect("a tokio runtime starts")
    })
}

fn downcast_sink<S: OutputSink + 'static>(sink: Box<dyn OutputSink>) -> S {
    let sink: Box<dyn std::any::Any> = sink;
    match sink.downcast::<S>() {
        Ok(sink) => *sink,
        Err(_) => unreachable!("run_boxed returns the sink run gave it"),
    }
}

/// Longest message or traceback kept from the guest; the rest is cut.
const MAX_REPORTED_BYTES: usize = 64 * 1024;

pub(crate) fn lossy(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(MAX_REPORTED_BYTES)];
    let mut text = String::from_utf8_lossy(cut).into_owned();
    if bytes.len() > MAX_REPORTED_BYTES {
        text.push_str(" [...]");
    }
    text
}

fn from_guest(outcome: script::Outcome) -> Outcome {
    match outcome {
        script::Outcome::Completed => Outcome::Completed,
        script::Outcome::RuntimeError(error) => Outcome::LuaError {
            message: lossy(&error.message),
            traceback: lossy(&error.traceback),
        },
        script::Outcome::SyntaxError(message) => Outcome::SyntaxError {
            message: lossy(&message),
        },
    }
}

/// Why the guest stopped before returning.
pub(crate) fn classify_stop(
    error: &wasmtime::Error,
    limits: &Limits,
    settings: &EngineSettings,
) -> Outcome {
    if let Some(stop) = error.downcast_ref::<HostStop>() {
        let HostStop::Limit(limit) = stop;
        return Outcome::LimitExceeded(limit.clone());
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => Outcome::LimitExceeded(Limit::Fuel { limit: limits.fuel }),
        Some(Trap::Interrupt) => Outcome::LimitExceeded(Limit::Time {
            limit: limits.timeout,
        }),
        Some(Trap::StackOverflow) => Outcome::LimitExceeded(Limit::NativeStack {
            limit_bytes: settings.max_wasm_stack_bytes,
        }),
        Some(trap) => Outcome::Fault {
            trap: trap.to_string(),
        },
        None => Outcome::Fault {
            trap: format!("{error:#}"),
        },
    }
}
