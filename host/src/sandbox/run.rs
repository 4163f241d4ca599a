//! The one lifecycle of a run, used by `exec`, script compiles, every HTTP
//! phase and subrequests alike:
//!
//! 1. [`Sandbox::start_run`]: check the limits, take the run's CPU slots,
//!    and build its store once, with all its state and every limit armed
//!    (memory limiter, fuel, the deadline counted from one `Instant`);
//! 2. [`Run::instantiate`]: a fresh instance from the pool;
//! 3. the caller calls the export it needs on the instance;
//! 4. [`Run::finish`]: classify how the run stopped, once, and report what
//!    it used.
//!
//! A run's store holds a [`RunData`]: the sandbox's [`RunBase`] and what the
//! layers above add (the request, the capabilities' state), built from the
//! run's [`RunData::Setup`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{Store, Trap};

use wasmtime::component::Linker;

use super::cpu::CpuSlots;
use super::host_api::{OutputSink, RunBase};
use super::prepared::PreparedGuest;
use super::{Limit, Limits, Outcome, Sandbox, SandboxError, classify_stop, engine};

/// The data of a run's store. The sandbox keeps its own part in it
/// ([`RunBase`]); the layer that assembles it adds its own (the request, the
/// capabilities' state) and links their host functions, each through a
/// projection onto its part, so no capability names the store type.
pub trait RunData: Sized + Send + 'static {
    /// What a run starts with beyond the sandbox's part (`Default`: a run
    /// with no request and nothing granted).
    type Setup: Default + Send;

    /// The store data of a run that starts with `base` and `setup`.
    fn assemble(base: RunBase, setup: Self::Setup, start: RunStart) -> Self;
    fn base(&self) -> &RunBase;
    fn base_mut(&mut self) -> &mut RunBase;
    fn into_base(self) -> RunBase;
    /// The CPU slots the run holds: a run that could not take them before
    /// its deadline is not instantiated.
    fn cpu(&self) -> &CpuSlots;
    /// The fuel account of the run's host calls ([`super::meter`]).
    fn host_work(&mut self) -> &mut super::HostWork;
    /// Register the host functions of every import beyond the core ones
    /// (output, clock, guard: the sandbox's own, on [`RunBase`]).
    fn add_to_linker(linker: &mut Linker<Self>) -> wasmtime::Result<()>;
}

/// When a run started and what bounds its waits, for [`RunData::assemble`].
pub struct RunStart {
    /// When the run's time is up.
    pub deadline: Instant,
    /// The run's time limit, for the error that names it.
    pub time_limit: Duration,
    /// The CPU slots the run holds while its guest code executes (already
    /// taken, unless the deadline passed first).
    pub cpu: CpuSlots,
}

/// Everything a run starts with.
pub struct RunSetup<D: RunData> {
    pub(crate) limits: Limits,
    /// Where `print` and warnings go.
    pub(crate) output: Box<dyn OutputSink>,
    /// The CPU slots the run holds while its guest code executes.
    pub(crate) cpu: CpuSlots,
    /// The state the run starts from: a tenant's prepared guest, or `None`
    /// for the sandbox's own.
    pub(crate) guest: Option<Arc<PreparedGuest<D>>>,
    /// The fuel this run shares with others (a request's subrequests), if
    /// any: it burns at most what is left of it.
    pub(crate) fuel_pool: Option<Arc<super::FuelPool>>,
    /// The memory this run shares with others, if any: its instance's
    /// memory is taken from it too.
    pub(crate) memory_pool: Option<Arc<super::MemoryPool>>,
    /// What the layers above start the run with (the request, what it may
    /// use beyond computation).
    pub(crate) setup: D::Setup,
}

impl<D: RunData> RunSetup<D> {
    /// A run with no request, no capabilities and no CPU slots to take.
    pub(crate) fn plain(limits: &Limits, output: Box<dyn OutputSink>) -> Self {
        RunSetup {
            limits: limits.clone(),
            output,
            cpu: CpuSlots::default(),
            guest: None,
            fuel_pool: None,
            memory_pool: None,
            setup: D::Setup::default(),
        }
    }
}

/// A run in progress: its store, and what [`Run::finish`] needs to report.
pub(crate) struct Run<'s, D: RunData> {
    sandbox: &'s Sandbox<D>,
    pub(crate) store: Store<D>,
    guest: Option<Arc<PreparedGuest<D>>>,
    limits: Limits,
    started: Instant,
    instantiated: bool,
}

/// How a run ended and what it used.
pub(crate) struct Finished<R, D> {
    /// What the called export returned, or the limit (or fault) that
    /// stopped the run.
    pub(crate) result: Result<R, Outcome>,
    pub(crate) fuel_used: u64,
    pub(crate) peak_memory_bytes: usize,
    pub(crate) duration: Duration,
    /// The run's state, with its output sink, request and CPU slots (still
    /// held, for a log phase that follows).
    pub(crate) state: D,
}

impl<D: RunData> Sandbox<D> {
    /// Start a run: check `setup.limits`, take its CPU slots (waiting at most
    /// until its deadline), and build its store. The deadline is counted
    /// from here.
    pub(crate) async fn start_run(&self, setup: RunSetup<D>) -> Result<Run<'_, D>, SandboxError> {
        self.check_limits(&setup.limits)?;
        Ok(self.start_checked_run(setup).await)
    }

    /// Whether this sandbox can run under `limits`.
    pub(crate) fn check_limits(&self, limits: &Limits) -> Result<(), SandboxError> {
        limits.validate()?;
        if limits.memory_bytes > self.settings.max_memory_bytes {
            return Err(SandboxError::InvalidLimits(format!(
                "a memory limit of {} bytes is above this engine's ceiling of {} bytes",
                limits.memory_bytes, self.settings.max_memory_bytes
            )));
        }
        Ok(())
    }

    /// [`Sandbox::start_run`] for limits [`Sandbox::check_limits`] accepted.
    pub(crate) async fn start_checked_run(&self, setup: RunSetup<D>) -> Run<'_, D> {
        let RunSetup {
            limits,
            output,
            mut cpu,
            guest,
            fuel_pool,
            memory_pool,
            setup,
        } = setup;
        let started = Instant::now();
        let deadline = started + limits.timeout;
        // A place in the instance pool first: a full pool makes a run wait
        // (off the CPU, so the runs that hold the instances can finish), not
        // fail. A run that gets neither a place nor a CPU before its deadline
        // is stopped by its time limit in `instantiate`.
        let instance = match self.instances.clone().try_acquire_owned() {
            Ok(place) => Some(place),
            Err(_) => {
                cpu.release();
                let place = self.instances.clone().acquire_owned();
                match tokio::time::timeout_at(deadline.into(), place).await {
                    Ok(Ok(place)) => Some(place),
                    _ => None,
                }
            }
        };
        let _ = cpu.acquire(deadline).await;
        let mut base = RunBase::new(limits.memory_bytes, limits.output_bytes, output);
        base.awake = Some(self.ticker.awake());
        base.instance = instance;
        base.limiter.share(memory_pool);
        let (account, fuel) = super::fuel_pool::FuelAccount::open(fuel_pool, limits.fuel);
        base.fuel = account;
        let start = RunStart {
            deadline,
            time_limit: limits.timeout,
            cpu,
        };
        let mut store = Store::new(&self.engine, D::assemble(base, setup, start));
        store.limiter(|state| &mut state.base_mut().limiter);
        super::meter::install(&mut store, D::host_work);
        // Fails only in an engine without fuel, and every engine has it.
        let _ = store.set_fuel(fuel);
        engine::arm_deadline(&mut store, deadline);
        Run {
            sandbox: self,
            store,
            guest,
            limits,
            started,
            instantiated: false,
        }
    }
}

/// The host could not run the guest at all (the instance pool is full, or
/// the guest does not link): the error, and the run's state.
pub(crate) struct Unavailable<D> {
    pub(crate) error: SandboxError,
    pub(crate) state: Box<D>,
}

impl<D> From<Unavailable<D>> for SandboxError {
    fn from(unavailable: Unavailable<D>) -> Self {
        unavailable.error
    }
}

impl<D: RunData> Run<'_, D> {
    /// The run holds its CPU slots and a place in the instance pool.
    fn may_instantiate(&self) -> bool {
        let data = self.store.data();
        data.cpu().is_held() && data.base().instance.is_some()
    }

    /// A fresh instance of the guest in this run's store.
    pub(crate) async fn instantiate(&mut self) -> wasmtime::Result<crate::bindings::Sandbox> {
        if !self.may_instantiate() {
            return Err(wasmtime::Error::new(Trap::Interrupt));
        }
        let pre = match &self.guest {
            Some(guest) => &guest.pre,
            None => &self.sandbox.pre,
        };
        let guest = pre.instantiate_async(&mut self.store).await?;
        self.instantiated = true;
        Ok(guest)
    }

    /// [`Run::instantiate`], as the component instance itself.
    pub(crate) async fn instantiate_instance(
        &mut self,
    ) -> wasmtime::Result<wasmtime::component::Instance> {
        if !self.may_instantiate() {
            return Err(wasmtime::Error::new(Trap::Interrupt));
        }
        let pre = match &self.guest {
            Some(guest) => &guest.pre,
            None => &self.sandbox.pre,
        };
        let instance = pre
            .instance_pre()
            .instantiate_async(&mut self.store)
            .await?;
        self.instantiated = true;
        Ok(instance)
    }

    /// End the run: how it stopped (`result` is what the instantiation or
    /// the call returned) and what it used.
    pub(crate) fn finish<R>(
        self,
        result: wasmtime::Result<R>,
    ) -> Result<Finished<R, D>, Unavailable<D>> {
        let refused = self.store.data().base().limiter.refused;
        let result = match result {
            Ok(value) => Ok(value),
            // Failed to instantiate for a reason that is not the run's
            // limit: the host could not run the guest at all.
            Err(error)
                if !self.instantiated
                    && !refused
                    && error.downcast_ref::<Trap>().is_none()
                    && error.downcast_ref::<super::host_api::HostStop>().is_none() =>
            {
                let mut state = self.store.into_data();
                state.base_mut().instance = None;
                state.base_mut().limiter.release();
                return Err(Unavailable {
                    error: SandboxError::Instantiate(format!("{error:#}")),
                    state: Box::new(state),
                });
            }
            Err(error) => Err(
                match classify_stop(&error, &self.limits, &self.sandbox.settings) {
                    // The guest aborted (or could not start) after the memory
                    // limiter refused to grow: that is the memory limit.
                    Outcome::Fault { .. } if refused => Outcome::LimitExceeded(Limit::Memory {
                        limit_bytes: self.limits.memory_bytes,
                    }),
                    outcome => outcome,
                },
            ),
        };
        let mut store = self.store;
        super::fuel_pool::settle(&mut store);
        let fuel_left = store.get_fuel().unwrap_or(0);
        let withheld = store.data().base().fuel.withheld();
        let mut state = store.into_data();
        // The instance is gone with its store: its place in the pool is free
        // for the next run (a log phase after a limit, another request).
        state.base_mut().instance = None;
        state.base_mut().limiter.release();
        Ok(Finished {
            result,
            fuel_used: (self.limits.fuel - fuel_left.min(self.limits.fuel))
                .saturating_sub(withheld),
            peak_memory_bytes: state.base().limiter.peak_memory,
            duration: self.started.elapsed(),
            state,
        })
    }
}
