//! Per-tenant accounting for operators, in the Prometheus text exposition
//! format (version 0.0.4), written by hand.
//!
//! What is exported, every series labelled with `tenant`:
//!
//! | family | type | extra labels | what it answers |
//! |---|---|---|---|
//! | `moonwall_requests_total` | counter | `status`, `outcome` | how a tenant's requests end (ok, script errors, limits, rate limiting, …) |
//! | `moonwall_subrequests_total` | counter | `status`, `outcome` | how its subrequests (`ngx.location.capture`) end |
//! | `moonwall_fuel_used_total` | counter | | how much guest CPU work (fuel) a tenant burns, subrequests included |
//! | `moonwall_limit_hits_total` | counter | `kind` | which limit (fuel, time, memory, stack, output, body) stops its scripts |
//! | `moonwall_request_duration_seconds` | histogram | `le` | wall-clock latency of its requests |
//! | `moonwall_queue_depth` | gauge | | requests waiting in its admission queue now |
//! | `moonwall_running` | gauge | | requests running for it now |
//! | `moonwall_reloads_total` | counter | `result` (`ok`, `failed`) | whether reloads of its policy and scripts succeed |
//!
//! The point is to let an operator see which tenant uses the shared host,
//! and how: who burns the fuel, who hits limits, who is queued or
//! rate-limited, whose reloads fail.
//!
//! The per-request path goes through a [`TenantMetrics`] handle, obtained
//! once per tenant from [`Metrics::tenant`]: fuel, the histogram and the
//! gauges are atomics; the counters with free-form labels (status ×
//! outcome, limit kind) sit in a small mutex-guarded map per tenant, which
//! allocates only the first time a label set is seen.
//!
//! Labels are bounded, since outcome and kind strings may come from less
//! trusted code paths: strings longer than [`MAX_LABEL_BYTES`] bytes are
//! cut (at a character boundary), a tenant keeps at most
//! [`MAX_OUTCOME_PAIRS`] distinct (status, outcome) pairs and
//! [`MAX_KINDS`] distinct kinds, and anything beyond is counted under
//! outcome (or kind) `other` (so at most one `other` series per status, and
//! one for kinds). Statuses outside `100..=999` are recorded as `0`. Tenant names are not bounded: they should be the configured
//! tenants, not values taken from requests.
//!
//! Here: the counters and their API. [`Metrics::render`] writes them in the
//! text format (`prometheus.rs`); [`serve`] answers `GET /metrics` with it,
//! on a listener of its own, separate from the scripts' server
//! (`endpoint.rs`).

mod endpoint;
mod prometheus;

pub use endpoint::serve;
pub use prometheus::CONTENT_TYPE;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

/// Outcome and kind label values are cut to at most this many bytes.
pub const MAX_LABEL_BYTES: usize = 64;
/// Distinct (status, outcome) pairs kept per tenant; beyond, the outcome is
/// counted as `other`.
pub const MAX_OUTCOME_PAIRS: usize = 256;
/// Distinct limit kinds kept per tenant; beyond, the kind is counted as
/// `other`.
pub const MAX_KINDS: usize = 64;
/// The label value that requests beyond the caps are counted under.
pub const OTHER: &str = "other";

/// Upper bounds of the duration histogram, in nanoseconds, and as rendered
/// in `le`. The `+Inf` bucket follows them.
const BUCKETS: [(u64, &str); 14] = [
    (500_000, "0.0005"),
    (1_000_000, "0.001"),
    (2_500_000, "0.0025"),
    (5_000_000, "0.005"),
    (10_000_000, "0.01"),
    (25_000_000, "0.025"),
    (50_000_000, "0.05"),
    (100_000_000, "0.1"),
    (250_000_000, "0.25"),
    (500_000_000, "0.5"),
    (1_000_000_000, "1"),
    (2_500_000_000, "2.5"),
    (5_000_000_000, "5"),
    (10_000_000_000, "10"),
];

/// Registry of all metrics, shared as `Arc<Metrics>`; `Send + Sync`.
///
/// It holds one set of counters per tenant, created on first use by
/// [`tenant`](Metrics::tenant) or [`reload`](Metrics::reload) and kept for
/// the life of the registry.
#[derive(Debug, Default)]
pub struct Metrics {
    tenants: RwLock<BTreeMap<Box<str>, Arc<TenantInner>>>,
}

/// Handle on one tenant's counters; cheap to clone (an `Arc`). The
/// per-request path uses only this.
#[derive(Debug, Clone)]
pub struct TenantMetrics {
    inner: Arc<TenantInner>,
}

/// One tenant's counters.
#[derive(Debug)]
struct TenantInner {
    name: Box<str>,
    fuel: AtomicU64,
    /// Requests per bucket, not cumulative; the last is `+Inf`.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    /// Sum of the durations, in nanoseconds.
    duration_sum_nanos: AtomicU64,
    queued: AtomicI64,
    running: AtomicI64,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    requests: Mutex<RequestCounts>,
    subrequests: Mutex<RequestCounts>,
    limit_hits: Mutex<KindCounts>,
}

/// Requests by status, then outcome.
#[derive(Debug, Default)]
struct RequestCounts {
    by_status: HashMap<u16, HashMap<Box<str>, u64>>,
    /// Pairs counted against [`MAX_OUTCOME_PAIRS`] (the `other` entries
    /// made by the cap itself are not).
    pairs: usize,
}

/// Limit hits by kind.
#[derive(Debug, Default)]
struct KindCounts {
    by_kind: HashMap<Box<str>, u64>,
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    /// Handle for one tenant, created on first use; cheap to clone. Take it
    /// once (per tenant, per reload) and keep it: the per-request path
    /// should not look tenants up by name.
    pub fn tenant(&self, name: &str) -> TenantMetrics {
        TenantMetrics {
            inner: self.tenant_inner(name),
        }
    }

    /// Count a reload of `tenant`'s policy and scripts, successful or not.
    pub fn reload(&self, tenant: &str, ok: bool) {
        let inner = self.tenant_inner(tenant);
        let counter = if ok {
            &inner.reloads_ok
        } else {
            &inner.reloads_failed
        };
        saturating_add(counter, 1);
    }

    /// The number of tenants known to the registry.
    pub fn tenant_count(&self) -> usize {
        self.tenants
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn tenant_inner(&self, name: &str) -> Arc<TenantInner> {
        if let Some(inner) = self
            .tenants
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
        {
            return inner.clone();
        }
        self.tenants
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.into())
            .or_insert_with(|| Arc::new(TenantInner::new(name)))
            .clone()
    }
}

impl TenantInner {
    fn new(name: &str) -> Self {
        TenantInner {
            name: name.into(),
            fuel: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            duration_sum_nanos: AtomicU64::new(0),
            queued: AtomicI64::new(0),
            running: AtomicI64::new(0),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            requests: Mutex::new(RequestCounts::default()),
            subrequests: Mutex::new(RequestCounts::default()),
            limit_hits: Mutex::new(KindCounts::default()),
        }
    }
}

impl TenantMetrics {
    /// The tenant's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Count one finished request: its HTTP status, its outcome label (for
    /// example `ok`, `lua-error`, `limit-time`, `limit-fuel`,
    /// `limit-memory`, `rate-limited`, `queue-full`, `not-found`, `static`),
    /// the fuel it used and its wall-clock duration.
    pub fn request(&self, status: u16, outcome: &str, fuel: u64, duration: Duration) {
        let inner = &*self.inner;
        if fuel != 0 {
            saturating_add(&inner.fuel, fuel);
        }
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BUCKETS
            .iter()
            .position(|&(bound, _)| nanos <= bound)
            .unwrap_or(BUCKETS.len());
        if let Some(counter) = inner.buckets.get(bucket) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        saturating_add(&inner.duration_sum_nanos, nanos);
        lock(&inner.requests).count(status, cut(outcome));
    }

    /// Count one finished subrequest: its status, outcome and fuel (added to
    /// the tenant's fuel; its time is its parent's).
    pub fn subrequest(&self, status: u16, outcome: &str, fuel: u64) {
        if fuel != 0 {
            saturating_add(&self.inner.fuel, fuel);
        }
        lock(&self.inner.subrequests).count(status, cut(outcome));
    }

    /// Count a request stopped by a limit; `kind` is for example `fuel`,
    /// `time`, `memory`, `stack`, `output` or `body`.
    pub fn limit_hit(&self, kind: &str) {
        lock(&self.inner.limit_hits).count(cut(kind));
    }

    /// Move the gauge of requests waiting in the tenant's admission queue:
    /// `queued(1)` when one starts waiting, `queued(-1)` when it leaves the
    /// queue.
    pub fn queued(&self, delta: i64) {
        saturating_add_signed(&self.inner.queued, delta);
    }

    /// Move the gauge of requests running for the tenant: `running(1)` when
    /// one starts, `running(-1)` when it ends.
    pub fn running(&self, delta: i64) {
        saturating_add_signed(&self.inner.running, delta);
    }
}

impl RequestCounts {
    fn count(&mut self, status: u16, outcome: &str) {
        let status = if (100..=999).contains(&status) {
            status
        } else {
            0
        };
        if let Some(n) = self
            .by_status
            .get_mut(&status)
            .and_then(|outcomes| outcomes.get_mut(outcome))
        {
            *n = n.saturating_add(1);
            return;
        }
        let outcomes = self.by_status.entry(status).or_default();
        if self.pairs < MAX_OUTCOME_PAIRS {
            self.pairs += 1;
            outcomes.insert(outcome.into(), 1);
        } else {
            // At most one `other` per status beyond the cap: bounded too.
            let n = outcomes.entry(OTHER.into()).or_insert(0);
            *n = n.saturating_add(1);
        }
    }
}

impl KindCounts {
    fn count(&mut self, kind: &str) {
        if let Some(n) = self.by_kind.get_mut(kind) {
            *n = n.saturating_add(1);
            return;
        }
        let kind = if self.by_kind.len() < MAX_KINDS {
            kind
        } else {
            OTHER
        };
        let n = self.by_kind.entry(kind.into()).or_insert(0);
        *n = n.saturating_add(1);
    }
}

/// A label value cut to [`MAX_LABEL_BYTES`], at a character boundary.
fn cut(value: &str) -> &str {
    if value.len() <= MAX_LABEL_BYTES {
        return value;
    }
    let mut end = MAX_LABEL_BYTES;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value.get(..end).unwrap_or("")
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; should it, the counts are
    // still sound.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A monotonic counter does not wrap: it sticks at the top.
fn saturating_add(counter: &AtomicU64, n: u64) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_add(n))
    });
}

fn saturating_add_signed(gauge: &AtomicI64, n: i64) {
    let _ = gauge.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_add(n))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) const MS: Duration = Duration::from_millis(1);

    /// The lines of `text` that belong to family `name` (its series, not
    /// its HELP/TYPE lines).
    pub(super) fn series<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .collect()
    }

    pub(super) fn scenario() -> Arc<Metrics> {
        let metrics = Metrics::new();
        let beta = metrics.tenant("beta");
        beta.request(200, "ok", 100, 2 * MS);
        beta.request(200, "ok", 50, 30 * MS);
        beta.request(500, "limit-fuel", 1000, Duration::from_micros(700));
        beta.limit_hit("fuel");
        beta.subrequest(404, "not-found", 0);
        beta.subrequest(200, "ok", 25);
        beta.running(1);
        let alpha = metrics.tenant("alpha");
        alpha.request(429, "rate-limited", 0, Duration::from_micros(100));
        alpha.queued(1);
        alpha.queued(1);
        alpha.queued(-1);
        metrics.reload("alpha", true);
        metrics.reload("alpha", false);
        metrics.reload("alpha", true);
        metrics
    }

    #[test]
    fn long_labels_are_cut_at_a_char_boundary() {
        assert_eq!(cut("short"), "short");
        let exact = "x".repeat(MAX_LABEL_BYTES);
        assert_eq!(cut(&exact), exact);
        let long = "y".repeat(MAX_LABEL_BYTES + 10);
        assert_eq!(cut(&long).len(), MAX_LABEL_BYTES);
        // 63 ASCII bytes then a 3-byte character straddling byte 64.
        let straddling = format!("{}€tail", "z".repeat(MAX_LABEL_BYTES - 1));
        assert_eq!(cut(&straddling), "z".repeat(MAX_LABEL_BYTES - 1));

        let metrics = Metrics::new();
        let t = metrics.tenant("t");
        t.request(200, &long, 0, MS);
        t.request(200, &format!("{long}-different-tail"), 0, MS);
        t.limit_hit(&straddling);
        let text = metrics.render();
        assert_eq!(
            series(&text, "moonwall_requests_total"),
            [format!(
                "moonwall_requests_total{{tenant=\"t\",status=\"200\",outcome=\"{}\"}} 2",
                "y".repeat(MAX_LABEL_BYTES)
            )]
        );
        assert_eq!(
            series(&text, "moonwall_limit_hits_total"),
            [format!(
                "moonwall_limit_hits_total{{tenant=\"t\",kind=\"{}\"}} 1",
                "z".repeat(MAX_LABEL_BYTES - 1)
            )]
        );
    }

    #[test]
    fn cardinality_is_capped() {
        let metrics = Metrics::new();
        let t = metrics.tenant("t");
        for i in 0..MAX_OUTCOME_PAIRS + 50 {
            t.request(200, &format!("o{i:04}"), 0, MS);
        }
        // Known pairs keep counting after the cap.
        t.request(200, "o0000", 0, MS);
        // A new status beyond the cap: its own `other`.
        t.request(503, "fresh", 0, MS);
        t.request(503, "fresh-too", 0, MS);
        for i in 0..MAX_KINDS + 10 {
            t.limit_hit(&format!("k{i:03}"));
        }
        t.limit_hit("k000");
        let text = metrics.render();

        let requests = series(&text, "moonwall_requests_total");
        assert_eq!(requests.len(), MAX_OUTCOME_PAIRS + 2);
        assert!(
            requests
                .contains(&r#"moonwall_requests_total{tenant="t",status="200",outcome="o0000"} 2"#)
        );
        assert!(
            requests.contains(
                &r#"moonwall_requests_total{tenant="t",status="200",outcome="other"} 50"#
            )
        );
        assert!(
            requests
                .contains(&r#"moonwall_requests_total{tenant="t",status="503",outcome="other"} 2"#)
        );
        assert!(!text.contains("o0256"));

        let kinds = series(&text, "moonwall_limit_hits_total");
        assert_eq!(kinds.len(), MAX_KINDS + 1);
        assert!(kinds.contains(&r#"moonwall_limit_hits_total{tenant="t",kind="k000"} 2"#));
        assert!(kinds.contains(&r#"moonwall_limit_hits_total{tenant="t",kind="other"} 10"#));

        // Statuses outside 100..=999 all count as 0.
        let metrics = Metrics::new();
        let t = metrics.tenant("s");
        t.request(0, "ok", 0, MS);
        t.request(7, "ok", 0, MS);
        t.request(u16::MAX, "ok", 0, MS);
        assert_eq!(
            series(&metrics.render(), "moonwall_requests_total"),
            [r#"moonwall_requests_total{tenant="s",status="0",outcome="ok"} 3"#]
        );
    }

    #[test]
    fn counters_and_gauges_saturate_instead_of_wrapping() {
        let metrics = Metrics::new();
        let t = metrics.tenant("t");
        t.request(200, "ok", u64::MAX, MS);
        t.request(200, "ok", u64::MAX, MS);
        t.queued(i64::MAX);
        t.queued(i64::MAX);
        t.running(i64::MIN);
        t.running(-1);
        let text = metrics.render();
        assert!(text.contains(&format!(
            "moonwall_fuel_used_total{{tenant=\"t\"}} {}\n",
            u64::MAX
        )));
        assert!(text.contains(&format!(
            "moonwall_queue_depth{{tenant=\"t\"}} {}\n",
            i64::MAX
        )));
        assert!(text.contains(&format!("moonwall_running{{tenant=\"t\"}} {}\n", i64::MIN)));
    }

    #[test]
    fn tenant_handles_share_counters_across_threads() {
        let metrics = Metrics::new();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let metrics = metrics.clone();
                std::thread::spawn(move || {
                    let t = metrics.tenant("shared");
                    for _ in 0..1000 {
                        t.running(1);
                        t.request(200, "ok", 1, MS);
                        t.running(-1);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(metrics.tenant_count(), 1);
        let text = metrics.render();
        assert!(text.contains("moonwall_fuel_used_total{tenant=\"shared\"} 4000\n"));
        assert!(text.contains("moonwall_running{tenant=\"shared\"} 0\n"));
        assert!(text.contains(
            "moonwall_requests_total{tenant=\"shared\",status=\"200\",outcome=\"ok\"} 4000\n"
        ));
    }
}
