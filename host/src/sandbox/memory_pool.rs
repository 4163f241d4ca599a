//! Memory shared by several runs: a client's request and all its
//! subrequests together hold at most the tenant's memory limit, in their
//! instances' linear memories and in the host's copies of what passes
//! between them (bodies, static files), however many run at once.
//!
//! A run of a pool takes each growth of its memory from the pool (the
//! growth is refused, as past the run's own cap, when the pool is short) and
//! gives it all back when its instance ends. Host copies hold a
//! [`Reservation`] for as long as they live.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes left for a group of runs.
#[derive(Debug)]
pub struct MemoryPool {
    left: AtomicUsize,
}

impl MemoryPool {
    pub fn new(bytes: usize) -> Self {
        MemoryPool {
            left: AtomicUsize::new(bytes),
        }
    }

    /// What the pool has left.
    pub fn left(&self) -> usize {
        self.left.load(Ordering::Acquire)
    }

    /// Take `bytes`, all or nothing.
    pub(crate) fn take(&self, bytes: usize) -> bool {
        self.left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(bytes)
            })
            .is_ok()
    }

    pub(crate) fn give(&self, bytes: usize) {
        self.left.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Hold `bytes` of the pool until the reservation is dropped, or `None`
    /// if the pool has less.
    pub fn reserve(self: &Arc<Self>, bytes: usize) -> Option<Reservation> {
        self.take(bytes).then(|| Reservation {
            pool: self.clone(),
            bytes,
        })
    }
}

/// Bytes of a [`MemoryPool`] held by a host copy, given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    pool: Arc<MemoryPool>,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.pool.give(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_all_or_nothing_and_given_back() {
        let pool = Arc::new(MemoryPool::new(100));
        let a = pool.reserve(60).unwrap();
        assert!(pool.reserve(41).is_none());
        let b = pool.reserve(40).unwrap();
        assert_eq!(pool.left(), 0);
        drop(a);
        drop(b);
        assert_eq!(pool.left(), 100);
    }
}
