//! The tenant's keepalive pool (`setkeepalive`): idle connections a later
//! request's connect to the same destination reuses.
//!
//! It belongs to the tenant's grant, so a policy change (a new grant) starts
//! an empty pool, and a connection made under one tenant's policy is never
//! handed to another tenant. Bounded by the policy: at most
//! `outbound_keepalive_pool` idle connections (the oldest is closed to make
//! room), each kept at most `outbound_keepalive_timeout_ms`. Expired
//! connections are closed by a reaper task and, failing that, whenever the
//! pool is used.
//!
//! An idle connection is a descriptor all the same: it keeps its place
//! among the tenant's open connections (`outbound_max_tenant_sockets`,
//! [`super::budget`]) until it is closed, and a connect that finds that
//! budget spent closes the oldest idle connection to make room
//! ([`Pool::close_oldest`]).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::budget::Place;
use super::conn::Stream;

struct Idle {
    key: String,
    stream: Stream,
    reused: u32,
    expires: Instant,
    /// Its place among the tenant's open connections.
    place: Place,
}

#[derive(Default)]
struct Inner {
    idle: VecDeque<Idle>,
    reaper: bool,
}

impl Inner {
    fn purge(&mut self, now: Instant) {
        self.idle.retain(|idle| idle.expires > now);
    }
}

#[derive(Default)]
pub struct Pool {
    inner: Mutex<Inner>,
    /// Wakes the reaper: a connection came in, or the pool is gone.
    wake: Arc<Notify>,
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.wake.notify_one();
    }
}

/// Whether an idle connection can be handed out: the peer neither closed
/// it nor sent anything unasked.
fn healthy(stream: &mut Stream) -> bool {
    stream.is_idle()
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The most recently kept healthy connection for `key`, how many times
    /// it was reused before, and its place among the tenant's connections.
    pub fn take(&self, key: &str) -> Option<(Stream, u32, Place)> {
        let mut inner = self.lock();
        inner.purge(Instant::now());
        while let Some(at) = inner.idle.iter().rposition(|idle| idle.key == key) {
            let mut idle = inner.idle.remove(at)?;
            if healthy(&mut idle.stream) {
                return Some((idle.stream, idle.reused, idle.place));
            }
        }
        None
    }

    /// Keep `stream` (and its `place`) for `key` until `expires`, with at
    /// most `per_key` idle connections for the key and `total` in all (the
    /// oldest go first).
    #[allow(clippy::too_many_arguments)]
    pub fn put(
        self: &Arc<Self>,
        key: String,
        stream: Stream,
        reused: u32,
        place: Place,
        expires: Instant,
        per_key: usize,
        total: usize,
    ) {
        if per_key == 0 || total == 0 {
            return;
        }
        let mut inner = self.lock();
        inner.purge(Instant::now());
        while inner.idle.iter().filter(|idle| idle.key == key).count() >= per_key {
            if let Some(at) = inner.idle.iter().position(|idle| idle.key == key) {
                inner.idle.remove(at);
            }
        }
        while inner.idle.len() >= total {
            inner.idle.pop_front();
        }
        inner.idle.push_back(Idle {
            key,
            stream,
            reused,
            expires,
            place,
        });
        if inner.reaper {
            self.wake.notify_one();
        } else if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            inner.reaper = true;
            runtime.spawn(reap(Arc::downgrade(self), self.wake.clone()));
        }
    }

    /// Close the oldest idle connection, giving its place back: false if
    /// there is none.
    pub fn close_oldest(&self) -> bool {
        self.lock().idle.pop_front().is_some()
    }

    /// How many idle connections are kept.
    pub fn len(&self) -> usize {
        self.lock().idle.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Close expired connections as they expire; end once the pool is empty or
/// gone.
async fn reap(pool: Weak<Pool>, wake: Arc<Notify>) {
    loop {
        let next = {
            let Some(pool) = pool.upgrade() else { return };
            let mut inner = pool.lock();
            inner.purge(Instant::now());
            match inner.idle.iter().map(|idle| idle.expires).min() {
                Some(next) => next,
                None => {
                    inner.reaper = false;
                    return;
                }
            }
        };
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = wake.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::net::TcpStream;

    fn place() -> Place {
        Place::take(&Default::default(), 1).unwrap()
    }

    async fn pair(listener: &tokio::net::TcpListener) -> (Stream, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (Stream::Plain(client.unwrap()), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn bounded_by_key_and_in_all() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Arc::new(Pool::default());
        let later = Instant::now() + Duration::from_secs(60);
        let mut peers = Vec::new();
        for (i, key) in ["a", "a", "a", "b", "c"].into_iter().enumerate() {
            let (client, peer) = pair(&listener).await;
            peers.push(peer);
            pool.put(key.into(), client, i as u32, place(), later, 2, 4);
        }
        // "a" kept its 2 newest; the oldest overall went for "c".
        assert_eq!(pool.len(), 4);
        assert_eq!(pool.take("a").map(|(_, reused, _)| reused), Some(2));
        assert_eq!(pool.take("a").map(|(_, reused, _)| reused), Some(1));
        assert!(pool.take("a").is_none());
        assert!(pool.take("b").is_some() && pool.take("c").is_some());
        assert!(pool.is_empty());
    }

    #[tokio::test]
    async fn idle_connections_keep_their_place_until_closed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Arc::new(Pool::default());
        let tenant = Arc::default();
        let later = Instant::now() + Duration::from_secs(60);
        let mut peers = Vec::new();
        for key in ["a", "b", "c"] {
            let (client, peer) = pair(&listener).await;
            peers.push(peer);
            let place = Place::take(&tenant, 3).unwrap();
            pool.put(key.into(), client, 0, place, later, 8, 8);
        }
        assert!(Place::take(&tenant, 3).is_none());
        // Handed out, the place goes with the connection.
        let (_, _, place) = pool.take("b").unwrap();
        assert!(Place::take(&tenant, 3).is_none());
        drop(place);
        let mine = Place::take(&tenant, 3).unwrap();
        // Closing the oldest ("a") gives its place back.
        assert!(Place::take(&tenant, 3).is_none());
        assert!(pool.close_oldest());
        assert!(pool.take("a").is_none());
        let also = Place::take(&tenant, 3).unwrap();
        assert!(pool.close_oldest() && !pool.close_oldest());
        drop((mine, also));
        assert_eq!(tenant.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn expired_or_closed_connections_are_not_handed_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Arc::new(Pool::default());
        let (client, _peer) = pair(&listener).await;
        pool.put("k".into(), client, 0, place(), Instant::now(), 8, 8);
        assert!(pool.take("k").is_none());

        let (client, peer) = pair(&listener).await;
        let later = Instant::now() + Duration::from_secs(60);
        pool.put("k".into(), client, 0, place(), later, 8, 8);
        drop(peer);
        // The reactor sees the peer's FIN soon; until then the connection
        // may still look alive, as in any pool.
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let mut inner = pool.lock();
            let closed = inner.idle.iter_mut().all(|idle| !healthy(&mut idle.stream));
            drop(inner);
            if closed {
                break;
            }
        }
        assert!(pool.take("k").is_none());
    }

    #[tokio::test]
    async fn the_reaper_closes_expired_connections() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Arc::new(Pool::default());
        let (client, _peer) = pair(&listener).await;
        pool.put(
            "k".into(),
            client,
            0,
            place(),
            Instant::now() + Duration::from_millis(20),
            8,
            8,
        );
        assert_eq!(pool.len(), 1);
        for _ in 0..400 {
            if pool.lock().idle.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(pool.lock().idle.is_empty());
        assert!(!pool.lock().reaper);
    }
}
