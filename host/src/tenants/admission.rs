//! Admission of a tenant's script requests: a token bucket for the request
//! rate (429 beyond it), then a place among the requests in flight and a
//! first CPU slot, with a bounded queue in front of them (503 with
//! `Retry-After` when the queue is full or a request waited too long).
//!
//! Two things are bounded, each by the tenant and by the server:
//! - **requests in flight** (`max_in_flight`): admitted and not finished,
//!   whether running or waiting on I/O. Each holds an instance, so this is
//!   bounded by memory, not by cores;
//! - **CPU slots** (`max_concurrency`, and the server's `max_running`): runs
//!   executing guest code at once. A run gives its slots back while it
//!   waits on the host and takes them again before it resumes
//!   ([`CpuSlots`]).
//!
//! Admission is decided before a request takes an instance, so a tenant
//! over its share costs the server a few atomics, never a sandbox. Every
//! semaphore is taken in one order (tenant in flight, server in flight,
//! tenant CPU, server CPU), so no two requests can each hold what the other
//! waits for.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::sandbox::CpuSlots;

/// How a tenant's requests are admitted (from its policy's `[limits]`).
#[derive(Debug, Clone, PartialEq)]
pub struct AdmissionLimits {
    /// Runs of the tenant executing guest code at once (CPU slots).
    pub max_concurrency: usize,
    /// Requests of the tenant in flight at once (running or waiting).
    pub max_in_flight: usize,
    pub max_queue: usize,
    pub queue_timeout: Duration,
    /// `None`: no rate limit.
    pub requests_per_second: Option<f64>,
    pub burst: u32,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Over the request rate: 429.
    RateLimited { retry_after_secs: u64 },
    /// The queue is full: 503.
    QueueFull { retry_after_secs: u64 },
    /// Waited in the queue for longer than the queue timeout: 503.
    QueueTimeout { retry_after_secs: u64 },
}

impl Rejection {
    pub fn status(&self) -> u16 {
        match self {
            Rejection::RateLimited { .. } => 429,
            Rejection::QueueFull { .. } | Rejection::QueueTimeout { .. } => 503,
        }
    }

    pub fn retry_after_secs(&self) -> u64 {
        match *self {
            Rejection::RateLimited { retry_after_secs }
            | Rejection::QueueFull { retry_after_secs }
            | Rejection::QueueTimeout { retry_after_secs } => retry_after_secs,
        }
    }

    /// The access log's and the metrics' word for it.
    pub fn label(&self) -> &'static str {
        match self {
            Rejection::RateLimited { .. } => "rate-limited",
            Rejection::QueueFull { .. } => "queue-full",
            Rejection::QueueTimeout { .. } => "queue-timeout",
        }
    }
}

/// One tenant's admission state, shared by all its requests (and kept
/// across reloads that do not change its limits).
#[derive(Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    in_flight: Arc<Semaphore>,
    /// Subrequests of the tenant's requests in flight at once: as many as
    /// its requests may be.
    subrequests: Arc<Semaphore>,
    cpu: Arc<Semaphore>,
    waiting: AtomicUsize,
    bucket: Option<Mutex<TokenBucket>>,
}

/// A request's places in flight, the tenant's and the server's: free again
/// when dropped.
pub struct InFlight {
    _permits: [OwnedSemaphorePermit; 2],
}

/// The server's own bounds, shared by every tenant.
#[derive(Debug, Clone)]
pub struct ServerGates {
    /// Requests in flight across all tenants.
    pub in_flight: Arc<Semaphore>,
    /// Runs executing guest code at once across all tenants.
    pub cpu: Arc<Semaphore>,
}

impl ServerGates {
    pub fn new(max_in_flight: usize, max_running: usize) -> Self {
        ServerGates {
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            cpu: Arc::new(Semaphore::new(max_running)),
        }
    }
}

/// An admitted request: its places in flight and its CPU slots, held, for
/// its run to give back while it waits.
pub struct Admitted {
    pub in_flight: InFlight,
    pub cpu: CpuSlots,
    /// How long the request waited in the queue.
    pub waited: Duration,
}

impl Admission {
    pub fn new(limits: AdmissionLimits) -> Self {
        let bucket = limits
            .requests_per_second
            .map(|rate| Mutex::new(TokenBucket::new(rate, limits.burst)));
        Admission {
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
            subrequests: Arc::new(Semaphore::new(limits.max_in_flight)),
            cpu: Arc::new(Semaphore::new(limits.max_concurrency)),
            waiting: AtomicUsize::new(0),
            bucket,
            limits,
        }
    }

    pub fn limits(&self) -> &AdmissionLimits {
        &self.limits
    }

    /// The CPU slots of a run of this tenant that was not admitted on its
    /// own (a subrequest): the tenant's, then the server's, taken when it
    /// starts.
    pub fn cpu_slots(&self, server: &ServerGates) -> CpuSlots {
        CpuSlots::new(vec![self.cpu.clone(), server.cpu.clone()])
    }

    /// A place for one subrequest of the tenant's (its requests' subrequests
    /// together are at most its `max_in_flight`), waited for: free again
    /// when dropped.
    pub async fn subrequest_place(&self) -> Option<OwnedSemaphorePermit> {
        self.subrequests.clone().acquire_owned().await.ok()
    }

    /// Requests waiting in the queue now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Take a token from the rate limiter (if any).
    pub fn check_rate(&self) -> Result<(), Rejection> {
        let Some(bucket) = &self.bucket else {
            return Ok(());
        };
        let mut bucket = bucket
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        bucket
            .take(Instant::now())
            .map_err(|wait| Rejection::RateLimited {
                retry_after_secs: whole_seconds(wait),
            })
    }

    /// Wait for a place in flight and a first CPU slot, the tenant's and
    /// the server's. `on_queue(+1/-1)` is told when the request starts and
    /// stops waiting (for the queue-depth gauge).
    pub async fn admit(
        &self,
        server: &ServerGates,
        on_queue: impl Fn(i64),
    ) -> Result<Admitted, Rejection> {
        let gates = [
            self.in_flight.clone(),
            server.in_flight.clone(),
            self.cpu.clone(),
            server.cpu.clone(),
        ];
        if let Some(admitted) = Self::try_take(&gates) {
            return Ok(admitted);
        }
        let retry_after_secs = whole_seconds(self.limits.queue_timeout);
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.limits.max_queue {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Rejection::QueueFull { retry_after_secs });
        }
        // Leaves the queue however the wait ends, also when the request is
        // dropped while waiting (its client went away).
        struct InQueue<'a, F: Fn(i64)> {
            waiting: &'a AtomicUsize,
            on_queue: F,
        }
        impl<F: Fn(i64)> Drop for InQueue<'_, F> {
            fn drop(&mut self) {
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                (self.on_queue)(-1);
            }
        }
        on_queue(1);
        let in_queue = InQueue {
            waiting: &self.waiting,
            on_queue,
        };
        let started = Instant::now();
        let all = async {
            let mut permits = Vec::with_capacity(gates.len());
            for gate in &gates {
                // The semaphores are never closed.
                permits.push(gate.clone().acquire_owned().await.ok()?);
            }
            Some(permits)
        };
        let acquired = tokio::time::timeout(self.limits.queue_timeout, all).await;
        drop(in_queue);
        match acquired {
            Ok(Some(permits)) => Ok(Self::admitted(gates, permits, started.elapsed())),
            _ => Err(Rejection::QueueTimeout { retry_after_secs }),
        }
    }

    /// Every place free at once: admitted without queueing.
    fn try_take(gates: &[Arc<Semaphore>; 4]) -> Option<Admitted> {
        let mut permits = Vec::with_capacity(gates.len());
        for gate in gates {
            permits.push(gate.clone().try_acquire_owned().ok()?);
        }
        Some(Self::admitted(gates.clone(), permits, Duration::ZERO))
    }

    fn admitted(
        gates: [Arc<Semaphore>; 4],
        mut permits: Vec<OwnedSemaphorePermit>,
        waited: Duration,
    ) -> Admitted {
        let [_, _, tenant_cpu, server_cpu] = gates;
        let cpu_permits = permits.split_off(2);
        let server_in_flight = permits.pop().expect("four permits");
        let tenant_in_flight = permits.pop().expect("four permits");
        Admitted {
            in_flight: InFlight {
                _permits: [tenant_in_flight, server_in_flight],
            },
            cpu: CpuSlots::held(vec![tenant_cpu, server_cpu], cpu_permits),
            waited,
        }
    }
}

/// `Retry-After` is in whole seconds: round up, at least 1.
fn whole_seconds(duration: Duration) -> u64 {
    (duration.as_secs() + u64::from(duration.subsec_nanos() > 0)).max(1)
}

/// `rate` tokens a second, up to `burst` saved.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    fn new(rate: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            updated: Instant::now(),
        }
    }

    /// Take one token, or say how long until one is there.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_allows_burst_then_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 3);
        bucket.updated = start;
        for _ in 0..3 {
            assert!(bucket.take(start).is_ok());
        }
        let wait = bucket.take(start).unwrap_err();
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100));
        assert!(bucket.take(start + Duration::from_millis(100)).is_ok());
        assert!(bucket.take(start + Duration::from_millis(100)).is_err());
        // Never more than the burst saved, however long it was idle.
        let later = start + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(bucket.take(later).is_ok());
        }
        assert!(bucket.take(later).is_err());
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1000)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(whole_seconds(Duration::ZERO), 1);
    }

    #[test]
    fn a_request_waiting_off_the_cpu_lets_another_run() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let server = ServerGates::new(100, 100);
            let admission = Admission::new(AdmissionLimits {
                max_concurrency: 1,
                max_in_flight: 2,
                max_queue: 10,
                queue_timeout: Duration::from_millis(50),
                requests_per_second: None,
                burst: 1,
            });
            let mut first = admission.admit(&server, |_| {}).await.unwrap();
            // The only CPU slot is held: the second times out in the queue.
            assert!(admission.admit(&server, |_| {}).await.is_err());
            // The first waits on I/O: its CPU slot is free, its place in
            // flight still taken.
            first.cpu.release();
            let mut second = admission.admit(&server, |_| {}).await.unwrap();
            // Two in flight: a third waits for a place, CPU or not.
            second.cpu.release();
            assert_eq!(
                admission.admit(&server, |_| {}).await.err(),
                Some(Rejection::QueueTimeout {
                    retry_after_secs: 1
                })
            );
            // The first resumes only once the second gives the CPU back.
            let soon = Instant::now() + Duration::from_secs(60);
            second.cpu.acquire(soon).await.unwrap();
            let blocked = Instant::now() + Duration::from_millis(20);
            assert!(first.cpu.acquire(blocked).await.is_err());
            second.cpu.release();
            first.cpu.acquire(soon).await.unwrap();
            assert_eq!(server.cpu.available_permits(), 99);
            assert_eq!(server.in_flight.available_permits(), 98);
        });
    }

    #[test]
    fn queue_is_bounded_and_times_out() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let server = ServerGates::new(100, 100);
            let admission = std::sync::Arc::new(Admission::new(AdmissionLimits {
                max_concurrency: 1,
                max_in_flight: 100,
                max_queue: 1,
                queue_timeout: Duration::from_millis(50),
                requests_per_second: None,
                burst: 1,
            }));
            let first = admission.admit(&server, |_| {}).await.unwrap();
            let waiting = tokio::spawn({
                let admission = admission.clone();
                let server = server.clone();
                async move { admission.admit(&server, |_| {}).await.map(|a| a.waited) }
            });
            tokio::task::yield_now().await;
            assert_eq!(admission.waiting(), 1);
            let full = admission.admit(&server, |_| {}).await.err().unwrap();
            assert_eq!(
                full,
                Rejection::QueueFull {
                    retry_after_secs: 1
                }
            );
            assert_eq!(full.status(), 503);
            let timed_out = waiting.await.unwrap().unwrap_err();
            assert_eq!(
                timed_out,
                Rejection::QueueTimeout {
                    retry_after_secs: 1
                }
            );
            drop(first);
            assert!(admission.admit(&server, |_| {}).await.is_ok());

            // A request dropped while it waits leaves the queue.
            let _first = admission.admit(&server, |_| {}).await.unwrap();
            let gauge = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
            let waiting = {
                let gauge = gauge.clone();
                let wait = admission.clone();
                let server = server.clone();
                tokio::spawn(async move {
                    let _ = wait
                        .admit(&server, move |delta| {
                            gauge.fetch_add(delta, std::sync::atomic::Ordering::SeqCst);
                        })
                        .await;
                })
            };
            tokio::task::yield_now().await;
            assert_eq!(
                (
                    admission.waiting(),
                    gauge.load(std::sync::atomic::Ordering::SeqCst)
                ),
                (1, 1)
            );
            waiting.abort();
            let _ = waiting.await;
            assert_eq!(
                (
                    admission.waiting(),
                    gauge.load(std::sync::atomic::Ordering::SeqCst)
                ),
                (0, 0)
            );
        });
    }
}
