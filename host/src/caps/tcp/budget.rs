//! The counts outbound connections are held to beyond one run:
//! - [`RequestBudget`]: one per client request, shared by the request and
//!   every subrequest under it (every run of the tree, at every level, the
//!   log phase included): sockets open at once (`outbound_max_sockets`),
//!   connects made (`outbound_max_connections`) and bytes received
//!   (`outbound_max_receive_kib`). Subrequests run in instances of their
//!   own; without one budget for the tree, `capture_multi` multiplied each
//!   bound by up to 50.
//! - [`TenantSockets`]: one per tenant (kept across policy reloads), shared
//!   by all its requests in flight: connections open at once, idle
//!   keepalive connections included (`outbound_max_tenant_sockets`). Every
//!   connection is a descriptor of this process, which every tenant's
//!   clients need too.
//!
//! Each place is a [`Place`], given back when it is dropped: a socket's
//! when the socket is closed, collected or its run ends; a connection's
//! when the connection is closed, wherever it is (a run's socket, an
//! operation, the keepalive pool).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// A place taken in a count, given back when dropped.
pub struct Place(Arc<AtomicUsize>);

impl Place {
    /// A place in `count` if fewer than `max` are taken.
    pub fn take(count: &Arc<AtomicUsize>, max: u64) -> Option<Place> {
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |taken| {
                (taken < max).then_some(taken + 1)
            })
            .ok()
            .map(|_| Place(count.clone()))
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a client request and all its subrequests use of their outbound
/// bounds, together.
#[derive(Default)]
pub struct RequestBudget {
    /// Sockets open.
    pub sockets: Arc<AtomicUsize>,
    /// Connects made (new or from the pool).
    connections: AtomicU64,
    /// Bytes received by all connections.
    pub received: Arc<AtomicU64>,
}

impl RequestBudget {
    /// Count one more connect, if fewer than `max` were made.
    pub fn connect(&self, max: u64) -> bool {
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |made| {
                (made < max).then_some(made + 1)
            })
            .is_ok()
    }

    /// Take back a connect counted by [`RequestBudget::connect`] that was
    /// refused before it began.
    pub fn unconnect(&self) {
        self.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A tenant's connections open at once, all its requests and its keepalive
/// pool together.
#[derive(Default)]
pub struct TenantSockets {
    open: Arc<AtomicUsize>,
}

impl TenantSockets {
    /// A place for one more connection, if fewer than `max` are open.
    pub fn take(&self, max: u64) -> Option<Place> {
        Place::take(&self.open, max)
    }

    /// How many connections are open.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_bounded_and_given_back() {
        let tenant = TenantSockets::default();
        let a = tenant.take(2).unwrap();
        let b = tenant.take(2).unwrap();
        assert!(tenant.take(2).is_none());
        drop(a);
        assert_eq!(tenant.open(), 1);
        let c = tenant.take(2).unwrap();
        assert!(tenant.take(2).is_none());
        drop((b, c));
        assert_eq!(tenant.open(), 0);

        let tree = RequestBudget::default();
        assert!(tree.connect(2) && tree.connect(2) && !tree.connect(2));
        tree.unconnect();
        assert!(tree.connect(2));
    }
}
