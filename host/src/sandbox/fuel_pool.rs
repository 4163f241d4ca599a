//! Fuel shared by several runs: a client's request and all its subrequests
//! together burn at most the tenant's fuel, however many instances they run
//! in and however many of them run at once.
//!
//! Each run of a pool starts with the smaller of its own fuel limit and what
//! the pool has left. At every epoch tick (and when it ends) it pays the pool
//! what it burnt since the last tick: once the pool is empty, every run of it
//! stops on its fuel limit at its next tick. A pool can be overdrawn by at
//! most one tick of work per run executing at that moment (runs off the CPU
//! burn nothing).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use wasmtime::AsContextMut;

/// Fuel left for a group of runs.
#[derive(Debug)]
pub struct FuelPool {
    left: AtomicU64,
}

impl FuelPool {
    pub fn new(fuel: u64) -> Self {
        FuelPool {
            left: AtomicU64::new(fuel),
        }
    }

    /// What the pool has left.
    pub fn left(&self) -> u64 {
        self.left.load(Ordering::Acquire)
    }

    /// Hold back up to `fuel` (what the pool has) for a run to come: no run
    /// of the pool can spend it until the [`Held`] is dropped.
    pub fn hold(self: &Arc<Self>, fuel: u64) -> Held {
        let before = self
            .left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                Some(left.saturating_sub(fuel))
            })
            .unwrap_or_else(|left| left);
        Held {
            pool: self.clone(),
            fuel: before.min(fuel),
        }
    }

    /// Take `used` out of the pool (down to zero at most); what is left.
    fn spend(&self, used: u64) -> u64 {
        if used == 0 {
            return self.left();
        }
        let before = self
            .left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                Some(left.saturating_sub(used))
            })
            .unwrap_or_else(|left| left);
        before.saturating_sub(used)
    }
}

/// Fuel held back from a pool ([`FuelPool::hold`]), given back when dropped.
#[derive(Debug)]
pub struct Held {
    pool: Arc<FuelPool>,
    fuel: u64,
}

impl Held {
    /// How much was held back.
    pub fn fuel(&self) -> u64 {
        self.fuel
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let fuel = self.fuel;
        let _ = self
            .pool
            .left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                Some(left.saturating_add(fuel))
            });
    }
}

/// A run's account with its pool (in its [`super::RunBase`]).
#[derive(Debug, Default)]
pub(crate) struct FuelAccount {
    pool: Option<std::sync::Arc<FuelPool>>,
    /// The store's fuel when the run last paid the pool.
    seen: u64,
    /// Fuel of the run's limit the pool could not give it at the start.
    withheld: u64,
}

impl FuelAccount {
    /// The account of a run whose limit is `limit`; the fuel its store
    /// starts with.
    pub(crate) fn open(pool: Option<std::sync::Arc<FuelPool>>, limit: u64) -> (Self, u64) {
        let fuel = match &pool {
            Some(pool) => limit.min(pool.left()),
            None => limit,
        };
        let account = FuelAccount {
            pool,
            seen: fuel,
            withheld: limit - fuel,
        };
        (account, fuel)
    }

    /// Fuel of the run's limit it never had.
    pub(crate) fn withheld(&self) -> u64 {
        self.withheld
    }
}

/// Pay the pool what the run in `store` burnt since it last paid; whether
/// the pool is empty now (the run must stop on its fuel limit).
///
/// The store's fuel is not lowered here: compiled code keeps its fuel count
/// in a register across the epoch check, so a change made from the epoch
/// callback would be overwritten. A run past an empty pool is stopped
/// instead, at most one tick late.
pub(crate) fn settle<T: super::RunData>(mut store: impl AsContextMut<Data = T>) -> bool {
    let mut store = store.as_context_mut();
    let Ok(fuel) = store.get_fuel() else {
        return false;
    };
    let account = &mut store.data_mut().base_mut().fuel;
    let Some(pool) = &account.pool else {
        return false;
    };
    let left = pool.spend(account.seen.saturating_sub(fuel));
    account.seen = fuel;
    left == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_never_goes_below_zero() {
        let pool = FuelPool::new(100);
        assert_eq!(pool.spend(30), 70);
        assert_eq!(pool.spend(0), 70);
        assert_eq!(pool.spend(100), 0);
        assert_eq!(pool.left(), 0);
        let (account, fuel) = FuelAccount::open(Some(std::sync::Arc::new(FuelPool::new(5))), 9);
        assert_eq!((fuel, account.withheld()), (5, 4));
        let pool = Arc::new(FuelPool::new(100));
        let held = pool.hold(30);
        assert_eq!((held.fuel(), pool.left()), (30, 70));
        assert_eq!(pool.spend(80), 0);
        let none = pool.hold(10);
        assert_eq!(none.fuel(), 0);
        drop((held, none));
        assert_eq!(pool.left(), 30);
    }
}
