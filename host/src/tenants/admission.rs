//! Admission of a tenant's script requests: a token bucket for the request
//! rate (429 beyond it) and a cap on requests running at once, with a
//! bounded queue in front of it (503 with `Retry-After` when the queue is
//! full or a request waited too long).
//!
//! Admission is decided before a request takes an instance, so a tenant
//! over its share costs the server a few atomics, never a sandbox.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How a tenant's requests are admitted (from its policy's `[limits]`).
#[derive(Debug, Clone, PartialEq)]
pub struct AdmissionLimits {
    pub max_concurrency: usize,
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
    running: std::sync::Arc<Semaphore>,
    waiting: AtomicUsize,
    bucket: Option<Mutex<TokenBucket>>,
}

/// A permit to run; the slot is free again when it is dropped.
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    /// How long the request waited in the queue.
    pub waited: Duration,
}

impl Admission {
    pub fn new(limits: AdmissionLimits) -> Self {
        let bucket = limits
            .requests_per_second
            .map(|rate| Mutex::new(TokenBucket::new(rate, limits.burst)));
        Admission {
            running: std::sync::Arc::new(Semaphore::new(limits.max_concurrency)),
            waiting: AtomicUsize::new(0),
            bucket,
            limits,
        }
    }

    pub fn limits(&self) -> &AdmissionLimits {
        &self.limits
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

    /// Wait for a slot to run in. `on_queue(+1/-1)` is told when the request
    /// starts and stops waiting (for the queue-depth gauge).
    pub async fn admit(&self, on_queue: impl Fn(i64)) -> Result<Admitted, Rejection> {
        if let Ok(permit) = self.running.clone().try_acquire_owned() {
            return Ok(Admitted {
                _permit: permit,
                waited: Duration::ZERO,
            });
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
        let acquired = tokio::time::timeout(
            self.limits.queue_timeout,
            self.running.clone().acquire_owned(),
        )
        .await;
        drop(in_queue);
        match acquired {
            Ok(Ok(permit)) => Ok(Admitted {
                _permit: permit,
                waited: started.elapsed(),
            }),
            // The semaphore is never closed; a timeout is the only way here.
            _ => Err(Rejection::QueueTimeout { retry_after_secs }),
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
    fn queue_is_bounded_and_times_out() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let admission = std::sync::Arc::new(Admission::new(AdmissionLimits {
                max_concurrency: 1,
                max_queue: 1,
                queue_timeout: Duration::from_millis(50),
                requests_per_second: None,
                burst: 1,
            }));
            let first = admission.admit(|_| {}).await.unwrap();
            let waiting = tokio::spawn({
                let admission = admission.clone();
                async move { admission.admit(|_| {}).await.map(|a| a.waited) }
            });
            tokio::task::yield_now().await;
            assert_eq!(admission.waiting(), 1);
            let full = admission.admit(|_| {}).await.err().unwrap();
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
            assert!(admission.admit(|_| {}).await.is_ok());

            // A request dropped while it waits leaves the queue.
            let _first = admission.admit(|_| {}).await.unwrap();
            let gauge = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
            let waiting = {
                let gauge = gauge.clone();
                let wait = admission.clone();
                tokio::spawn(async move {
                    let _ = wait
                        .admit(move |delta| {
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
