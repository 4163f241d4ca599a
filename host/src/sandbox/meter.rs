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

    /// An account as the call hook arms it for a call with `fuel` left
    /// (tests of host work outside a store).
    #[cfg(test)]
    pub fn armed(fuel: u64, deadline: Instant) -> HostWork {
        HostWork {
            available: fuel,
            ..HostWork::new(deadline, Duration::from_secs(1))
        }
    }

    /// Fuel the current host call has charged so far.
    pub fn charged(&self) -> u64 {
        self.charged
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
