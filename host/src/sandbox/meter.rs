//! Host work, metered: what a host call does for the guest in proportion to
//! sizes the guest chose (hashing a string, searching a subject, visiting a
//! dict's keys) is paid for with the run's fuel, and stops at its deadline.
//!
//! Host functions reach only their own part of the store, not the store's
//! fuel, so the sandbox keeps the account in between: a call hook around
//! every host call ([`install`]) records the fuel the run has when the call
//! begins; the call charges its work against that ([`HostWork::charge`],
//! before doing it) and checks the deadline between bounded steps
//! ([`HostWork::step`]); when the call returns, the hook takes what it
//! charged from the store's fuel. A call that would need more fuel than the
//! run has left stops the run with its fuel limit, as if the guest had done
//! the work itself; one past the deadline stops it with its time limit.
//!
//! The rates (fuel per byte or per item) are set where the work is done, in
//! the capabilities, and documented in docs/sandbox.md ("Host work").

use std::time::{Duration, Instant};

use wasmtime::{CallHook, Store, StoreContextMut, Trap};

use super::host_api::HostStop;
use super::outcome::Limit;

/// The fuel account of a run's host calls, and its deadline.
#[derive(Debug)]
pub struct HostWork {
    /// Fuel the run had when the current host call began.
    available: u64,
    /// Fuel the current host call has charged so far.
    charged: u64,
    /// Host calls in progress: a host call's results are written into the
    /// guest by guest code (its allocator), which may itself call the host
    /// (to grow its memory); only the outermost call settles the account.
    depth: u32,
    deadline: Instant,
    time_limit: Duration,
}

impl HostWork {
    pub fn new(deadline: Instant, time_limit: Duration) -> HostWork {
        HostWork {
            available: 0,
            charged: 0,
            depth: 0,
            deadline,
            time_limit,
        }
    }

    /// Charge `fuel` for host work about to be done. `Err` (the run's fuel
    /// limit: return it from the host call) when the run has not that much
    /// fuel left; the work must not be done then.
    pub fn charge(&mut self, fuel: u64) -> wasmtime::Result<()> {
        self.charged = self.charged.saturating_add(fuel);
        if self.charged > self.available {
            return Err(wasmtime::Error::new(Trap::OutOfFuel));
        }
        Ok(())
    }

    /// Fuel the current host call may still charge.
    pub fn remaining(&self) -> u64 {
        self.available.saturating_sub(self.charged)
    }

    /// `Err` (the run's time limit) once the run's deadline has passed.
    pub fn check_deadline(&self) -> wasmtime::Result<()> {
        if Instant::now() >= self.deadline {
            return Err(self.deadline_passed());
        }
        Ok(())
    }

    /// One bounded step of host work: check the deadline, then charge
    /// `fuel` for the step.
    pub fn step(&mut self, fuel: u64) -> wasmtime::Result<()> {
        self.check_deadline()?;
        self.charge(fuel)
    }

    /// The error that stops the run at its time limit.
    pub fn deadline_passed(&self) -> wasmtime::Error {
        wasmtime::Error::new(HostStop::Limit(Limit::Time {
            limit: self.time_limit,
        }))
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// `fuel` for `count` units at `rate` fuel each, saturating.
    pub fn cost(count: usize, rate: u64) -> u64 {
        u64::try_from(count)
            .unwrap_or(u64::MAX)
            .saturating_mul(rate)
    }
}

/// Arm the account of a store whose data keeps its [`HostWork`] where
/// `work` finds it: around every host call, record the fuel available, then
/// take what the call charged.
pub(crate) fn install<T: 'static>(store: &mut Store<T>, work: fn(&mut T) -> &mut HostWork) {
    store.call_hook(move |mut store: StoreContextMut<'_, T>, hook| {
        match hook {
            CallHook::CallingHost => {
                let fuel = store.get_fuel()?;
                let account = work(store.data_mut());
                if account.depth == 0 {
                    account.available = fuel;
                    account.charged = 0;
                }
                account.depth += 1;
            }
            CallHook::ReturningFromHost => {
                let account = work(store.data_mut());
                account.depth = account.depth.saturating_sub(1);
                if account.depth > 0 {
                    return Ok(());
                }
                let charged = std::mem::take(&mut account.charged);
                if charged > 0 {
                    let fuel = store.get_fuel()?;
                    store.set_fuel(fuel.saturating_sub(charged))?;
                    if charged > fuel {
                        return Err(wasmtime::Error::new(Trap::OutOfFuel));
                    }
                }
            }
            CallHook::CallingWasm | CallHook::ReturningFromWasm => {}
        }
        Ok(())
    });
}

/// CPU time this thread has used: what host work is charged by when its
/// cost is not known in advance (a regex search, a compile).
pub fn thread_cpu_time() -> Duration {
    #[cfg(unix)]
    {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `now` is a valid timespec for the call to fill in.
        let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
        if status == 0 {
            return Duration::new(
                u64::try_from(now.tv_sec).unwrap_or(0),
                u32::try_from(now.tv_nsec).unwrap_or(0),
            );
        }
    }
    // Elsewhere (or if the clock fails): wall-clock time, which includes
    // time the thread did not run, so charges more, never less.
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}
