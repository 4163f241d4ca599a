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

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{Store, Trap};

use super::cpu::CpuSlots;
use super::host_api::{OutputSink, RunState};
use super::prepared::PreparedGuest;
use super::{Limit, Limits, Outcome, Sandbox, SandboxError, classify_stop, engine};
use crate::caps::{RequestCaps, RunCaps};
use crate::http::guest_api::HttpState;

/// Everything a run starts with.
pub(crate) struct RunSetup {
    pub(crate) limits: Limits,
    /// Where `print` and warnings go.
    pub(crate) output: Box<dyn OutputSink>,
    /// The request, when the run serves one.
    pub(crate) http: Option<HttpState>,
    /// What the run may use beyond computation.
    pub(crate) caps: RequestCaps,
    /// The CPU slots the run holds while its guest code executes.
    pub(crate) cpu: CpuSlots,
    /// The state the run starts from: a tenant's prepared guest, or `None`
    /// for the sandbox's own.
    pub(crate) guest: Option<Arc<PreparedGuest>>,
}

impl RunSetup {
    /// A run with no request, no capabilities and no CPU slots to take.
    pub(crate) fn plain(limits: &Limits, output: Box<dyn OutputSink>) -> Self {
        RunSetup {
            limits: limits.clone(),
            output,
            http: None,
            caps: RequestCaps::none(),
            cpu: CpuSlots::default(),
            guest: None,
        }
    }
}

/// A run in progress: its store, and what [`Run::finish`] needs to report.
pub(crate) struct Run<'s> {
    sandbox: &'s Sandbox,
    pub(crate) store: Store<RunState>,
    guest: Option<Arc<PreparedGuest>>,
    limits: Limits,
    started: Instant,
    instantiated: bool,
}

/// How a run ended and what it used.
pub(crate) struct Finished<R> {
    /// What the called export returned, or the limit (or fault) that
    /// stopped the run.
    pub(crate) result: Result<R, Outcome>,
    pub(crate) fuel_used: u64,
    pub(crate) peak_memory_bytes: usize,
    pub(crate) duration: Duration,
    /// The run's state, with its output sink, request and CPU slots (still
    /// held, for a log phase that follows).
    pub(crate) state: RunState,
}

impl Sandbox {
    /// Start a run: check `setup.limits`, take its CPU slots (waiting at most
    /// until its deadline), and build its store. The deadline is counted
    /// from here.
    pub(crate) async fn start_run(&self, setup: RunSetup) -> Result<Run<'_>, SandboxError> {
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
    pub(crate) async fn start_checked_run(&self, setup: RunSetup) -> Run<'_> {
        let RunSetup {
            limits,
            output,
            http,
            caps,
            mut cpu,
            guest,
        } = setup;
        let started = Instant::now();
        let deadline = started + limits.timeout;
        // A run that cannot get a CPU before its deadline is stopped by its
        // time limit in `instantiate`.
        let _ = cpu.acquire(deadline).await;
        let mut state = RunState::new(limits.memory_bytes, limits.output_bytes, output);
        state.awake = Some(self.ticker.awake());
        state.http = http;
        state.caps = RunCaps::new(caps, deadline, limits.timeout, cpu);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        // Fails only in an engine without fuel, and every engine has it.
        let _ = store.set_fuel(limits.fuel);
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
pub(crate) struct Unavailable {
    pub(crate) error: SandboxError,
    pub(crate) state: Box<RunState>,
}

impl From<Unavailable> for SandboxError {
    fn from(unavailable: Unavailable) -> Self {
        unavailable.error
    }
}

impl Run<'_> {
    /// A fresh instance of the guest in this run's store.
    pub(crate) async fn instantiate(&mut self) -> wasmtime::Result<super::host_api::Sandbox> {
        if !self.store.data().caps.cpu.is_held() {
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
        if !self.store.data().caps.cpu.is_held() {
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
    pub(crate) fn finish<R>(self, result: wasmtime::Result<R>) -> Result<Finished<R>, Unavailable> {
        let refused = self.store.data().limiter.refused;
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
                return Err(Unavailable {
                    error: SandboxError::Instantiate(format!("{error:#}")),
                    state: Box::new(self.store.into_data()),
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
        let fuel_left = self.store.get_fuel().unwrap_or(0);
        let state = self.store.into_data();
        Ok(Finished {
            result,
            fuel_used: self.limits.fuel - fuel_left.min(self.limits.fuel),
            peak_memory_bytes: state.limiter.peak_memory,
            duration: self.started.elapsed(),
            state,
        })
    }
}
