//! CPU slots: how many runs execute guest code at once.
//!
//! A run holds its slots only while its guest code executes. When it waits
//! on the host (a timer, a socket, a dict backend, a subrequest, a slow
//! client) it gives them back, so a request that waits on the network costs
//! memory, not a CPU slot, and takes them again before its guest code
//! resumes. The slots are semaphores acquired in a fixed order (a tenant's,
//! then the server's), so two runs never hold one each while waiting for
//! the other's.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The CPU slots one run must hold while its guest code executes.
#[derive(Default)]
pub struct CpuSlots {
    /// The semaphores to hold, in the order they are acquired.
    gates: Vec<Arc<Semaphore>>,
    /// The permits held now: all of `gates`, or none.
    held: Vec<OwnedSemaphorePermit>,
}

/// The run's deadline passed while it waited for a CPU slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadlinePassed;

impl CpuSlots {
    /// Slots of `gates`, acquired in this order; none held yet.
    pub fn new(gates: Vec<Arc<Semaphore>>) -> Self {
        CpuSlots {
            gates,
            held: Vec::new(),
        }
    }

    /// Slots held already (taken by `permits` from `gates`, in order): for a
    /// request whose admission waited for them.
    pub fn held(gates: Vec<Arc<Semaphore>>, permits: Vec<OwnedSemaphorePermit>) -> Self {
        debug_assert_eq!(gates.len(), permits.len());
        CpuSlots {
            gates,
            held: permits,
        }
    }

    /// Take every slot (a no-op when they are held), waiting at most until
    /// `deadline`.
    pub async fn acquire(&mut self, deadline: Instant) -> Result<(), DeadlinePassed> {
        if self.is_held() {
            return Ok(());
        }
        // Fast path: every slot free, no timer armed.
        if let Some(permits) = self.try_acquire_all() {
            self.held = permits;
            return Ok(());
        }
        let all = async {
            let mut permits = Vec::with_capacity(self.gates.len());
            for gate in &self.gates {
                match gate.clone().acquire_owned().await {
                    Ok(permit) => permits.push(permit),
                    // A closed gate (never closed today) holds nothing back.
                    Err(_) => continue,
                }
            }
            permits
        };
        let permits = tokio::time::timeout_at(deadline.into(), all)
            .await
            .map_err(|_| DeadlinePassed)?;
        self.held = permits;
        Ok(())
    }

    fn try_acquire_all(&self) -> Option<Vec<OwnedSemaphorePermit>> {
        let mut permits = Vec::with_capacity(self.gates.len());
        for gate in &self.gates {
            permits.push(gate.clone().try_acquire_owned().ok()?);
        }
        Some(permits)
    }

    /// Give every slot back (a no-op when none is held).
    pub fn release(&mut self) {
        self.held.clear();
    }

    pub fn is_held(&self) -> bool {
        self.held.len() == self.gates.len()
    }
}

/// Poll `future` once: its output if it is ready at once. Host work that
/// finishes at once keeps the run's slots; only real waits give them back.
pub async fn ready_now<F: Future + Unpin>(future: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut *future).poll(cx) {
            std::task::Poll::Ready(output) => Some(output),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn slots_are_given_back_and_taken_again() {
        let server = Arc::new(Semaphore::new(1));
        let mut first = CpuSlots::new(vec![server.clone()]);
        let mut second = CpuSlots::new(vec![server.clone()]);
        let soon = Instant::now() + Duration::from_secs(60);
        first.acquire(soon).await.unwrap();
        assert_eq!(server.available_permits(), 0);
        // The second waits until its deadline while the first holds the slot.
        let passed = Instant::now() + Duration::from_millis(20);
        assert_eq!(second.acquire(passed).await, Err(DeadlinePassed));
        first.release();
        assert_eq!(server.available_permits(), 1);
        second.acquire(soon).await.unwrap();
        assert!(second.is_held());
        // Acquiring what is held is a no-op.
        second.acquire(soon).await.unwrap();
        assert_eq!(server.available_permits(), 0);
        drop(second);
        assert_eq!(server.available_permits(), 1);
    }

    #[tokio::test]
    async fn no_gates_means_always_held() {
        let mut none = CpuSlots::default();
        assert!(none.is_held());
        none.acquire(Instant::now()).await.unwrap();
    }
}
