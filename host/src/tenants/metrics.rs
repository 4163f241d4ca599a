//! Per-tenant accounting for operators, in the Prometheus text exposition
//! format (version 0.0.4), written by hand.
//!
//! What is exported, every series labelled with `tenant`:
//!
//! | family | type | extra labels | what it answers |
//! |---|---|---|---|
//! | `moonwall_requests_total` | counter | `status`, `outcome` | how a tenant's requests end (ok, script errors, limits, rate limiting, …) |
//! | `moonwall_fuel_used_total` | counter | | how much guest CPU work (fuel) a tenant burns |
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
//! [`render`](Metrics::render) produces deterministic output: tenants sorted
//! by name, label sets sorted (status numerically, then outcome; kinds by
//! name). [`serve`] exposes it on `GET /metrics` on a listener of its own,
//! separate from the scripts' server.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

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
/// The `Content-Type` of [`serve`]'s answer to `GET /metrics`.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

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

/// Connections [`serve`] handles at once; more wait before being accepted.
const MAX_CONNECTIONS: usize = 64;
/// Time a client of [`serve`] has to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// After shutdown, the time open connections of [`serve`] get to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

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

    /// Render every family in the Prometheus text format 0.0.4, tenants
    /// sorted by name and label sets sorted, so that equal counts give
    /// equal text.
    pub fn render(&self) -> String {
        let tenants: Vec<Arc<TenantInner>> = self
            .tenants
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let mut out = String::with_capacity(1024 + tenants.len() * 2048);

        family(
            &mut out,
            "moonwall_requests_total",
            "counter",
            "Requests finished, by tenant, HTTP status and outcome.",
        );
        for tenant in &tenants {
            let mut rows: Vec<(u16, Box<str>, u64)> = {
                let counts = lock(&tenant.requests);
                counts
                    .by_status
                    .iter()
                    .flat_map(|(&status, outcomes)| {
                        outcomes
                            .iter()
                            .map(move |(outcome, &n)| (status, outcome.clone(), n))
                    })
                    .collect()
            };
            rows.sort_unstable();
            for (status, outcome, n) in rows {
                series_start(&mut out, "moonwall_requests_total", &tenant.name);
                let _ = write!(out, ",status=\"{status}\",outcome=\"");
                escape_into(&mut out, &outcome);
                let _ = writeln!(out, "\"}} {n}");
            }
        }

        family(
            &mut out,
            "moonwall_fuel_used_total",
            "counter",
            "Fuel (guest instructions, roughly) used by the tenant's requests.",
        );
        for tenant in &tenants {
            series_start(&mut out, "moonwall_fuel_used_total", &tenant.name);
            let _ = writeln!(out, "}} {}", tenant.fuel.load(Ordering::Relaxed));
        }

        family(
            &mut out,
            "moonwall_limit_hits_total",
            "counter",
            "Requests stopped by a limit, by tenant and kind of limit.",
        );
        for tenant in &tenants {
            let mut rows: Vec<(Box<str>, u64)> = lock(&tenant.limit_hits)
                .by_kind
                .iter()
                .map(|(kind, &n)| (kind.clone(), n))
                .collect();
            rows.sort_unstable();
            for (kind, n) in rows {
                series_start(&mut out, "moonwall_limit_hits_total", &tenant.name);
                out.push_str(",kind=\"");
                escape_into(&mut out, &kind);
                let _ = writeln!(out, "\"}} {n}");
            }
        }

        family(
            &mut out,
            "moonwall_request_duration_seconds",
            "histogram",
            "Wall-clock duration of the tenant's requests.",
        );
        for tenant in &tenants {
            let mut cumulative: u64 = 0;
            for (i, bucket) in tenant.buckets.iter().enumerate() {
                cumulative = cumulative.saturating_add(bucket.load(Ordering::Relaxed));
                let le = BUCKETS.get(i).map_or("+Inf", |&(_, le)| le);
                series_start(
                    &mut out,
                    "moonwall_request_duration_seconds_bucket",
                    &tenant.name,
                );
                let _ = writeln!(out, ",le=\"{le}\"}} {cumulative}");
            }
            series_start(
                &mut out,
                "moonwall_request_duration_seconds_sum",
                &tenant.name,
            );
            out.push_str("} ");
            seconds_into(&mut out, tenant.duration_sum_nanos.load(Ordering::Relaxed));
            out.push('\n');
            // The count is the +Inf bucket, read once: the two always agree.
            series_start(
                &mut out,
                "moonwall_request_duration_seconds_count",
                &tenant.name,
            );
            let _ = writeln!(out, "}} {cumulative}");
        }

        family(
            &mut out,
            "moonwall_queue_depth",
            "gauge",
            "Requests of the tenant waiting in its admission queue.",
        );
        for tenant in &tenants {
            series_start(&mut out, "moonwall_queue_depth", &tenant.name);
            let _ = writeln!(out, "}} {}", tenant.queued.load(Ordering::Relaxed));
        }

        family(
            &mut out,
            "moonwall_running",
            "gauge",
            "Requests of the tenant running now.",
        );
        for tenant in &tenants {
            series_start(&mut out, "moonwall_running", &tenant.name);
            let _ = writeln!(out, "}} {}", tenant.running.load(Ordering::Relaxed));
        }

        family(
            &mut out,
            "moonwall_reloads_total",
            "counter",
            "Reloads of the tenant's policy and scripts, by result.",
        );
        for tenant in &tenants {
            for (result, counter) in [
                ("failed", &tenant.reloads_failed),
                ("ok", &tenant.reloads_ok),
            ] {
                series_start(&mut out, "moonwall_reloads_total", &tenant.name);
                let _ = writeln!(
                    out,
                    ",result=\"{result}\"}} {}",
                    counter.load(Ordering::Relaxed)
                );
            }
        }

        out
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

/// The `# HELP` and `# TYPE` lines of a family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// `name{tenant="…"`: the caller adds further labels, `}`, and the value.
fn series_start(out: &mut String, name: &str, tenant: &str) {
    out.push_str(name);
    out.push_str("{tenant=\"");
    escape_into(out, tenant);
    out.push('"');
}

/// A label value escaped per the text format: `\` → `\\`, `"` → `\"`,
/// newline → `\n`.
fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Nanoseconds as exact decimal seconds: `0`, `1.5`, `0.000000001`.
fn seconds_into(out: &mut String, nanos: u64) {
    let secs = nanos / 1_000_000_000;
    let frac = nanos % 1_000_000_000;
    if frac == 0 {
        let _ = write!(out, "{secs}");
    } else {
        let digits = format!("{frac:09}");
        let _ = write!(out, "{secs}.{}", digits.trim_end_matches('0'));
    }
}

/// Serve `GET /metrics` (and `HEAD`), answered with [`Metrics::render`] as
/// `text/plain; version=0.0.4`, on `listener` until `shutdown` completes.
/// Any other path gets 404, other methods on `/metrics` 405.
///
/// HTTP/1.1 through hyper, one tokio task per connection, at most 64
/// connections at once (more wait to be accepted), 10 s to send the request
/// headers. Once `shutdown` completes, it stops accepting, gives open
/// connections 2 s to finish, and closes the rest.
pub async fn serve(
    metrics: Arc<Metrics>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let graceful = GracefulShutdown::new();
    let mut tasks = JoinSet::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);

    tokio::pin!(shutdown);
    loop {
        // Reap finished connections so that the set stays small.
        while tasks.try_join_next().is_some() {}
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: pause, do not spin.
                    tracing::warn!("metrics: accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let metrics = metrics.clone();
        let service = hyper::service::service_fn(move |request| {
            let metrics = metrics.clone();
            async move { Ok::<_, Infallible>(answer(&metrics, &request)) }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tasks.spawn(async move {
            let _permit = permit;
            if let Err(error) = connection.await {
                tracing::debug!(%remote, "metrics: connection ended: {error}");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(SHUTDOWN_GRACE) => {
            tracing::debug!("metrics: shutdown grace over; closing {} connection(s)", tasks.len());
        }
    }
    tasks.shutdown().await;
    Ok(())
}

/// The answer to one request of the metrics listener.
fn answer(metrics: &Metrics, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(hyper::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let mut response = Response::new(Full::new(Bytes::from(metrics.render())));
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static(CONTENT_TYPE),
    );
    headers.insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    response
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const MS: Duration = Duration::from_millis(1);

    /// The lines of `text` that belong to family `name` (its series, not
    /// its HELP/TYPE lines).
    fn series<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .collect()
    }

    fn scenario() -> Arc<Metrics> {
        let metrics = Metrics::new();
        let beta = metrics.tenant("beta");
        beta.request(200, "ok", 100, 2 * MS);
        beta.request(200, "ok", 50, 30 * MS);
        beta.request(500, "limit-fuel", 1000, Duration::from_micros(700));
        beta.limit_hit("fuel");
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
    fn renders_the_whole_scenario_exactly() {
        let expected = r#"# HELP moonwall_requests_total Requests finished, by tenant, HTTP status and outcome.
# TYPE moonwall_requests_total counter
moonwall_requests_total{tenant="alpha",status="429",outcome="rate-limited"} 1
moonwall_requests_total{tenant="beta",status="200",outcome="ok"} 2
moonwall_requests_total{tenant="beta",status="500",outcome="limit-fuel"} 1
# HELP moonwall_fuel_used_total Fuel (guest instructions, roughly) used by the tenant's requests.
# TYPE moonwall_fuel_used_total counter
moonwall_fuel_used_total{tenant="alpha"} 0
moonwall_fuel_used_total{tenant="beta"} 1150
# HELP moonwall_limit_hits_total Requests stopped by a limit, by tenant and kind of limit.
# TYPE moonwall_limit_hits_total counter
moonwall_limit_hits_total{tenant="beta",kind="fuel"} 1
# HELP moonwall_request_duration_seconds Wall-clock duration of the tenant's requests.
# TYPE moonwall_request_duration_seconds histogram
moonwall_request_duration_seconds_bucket{tenant="alpha",le="0.0005"} 1
moonwall_request_duration_seconds_bucket{tenant="alpha",le="0.001"} 1
moonwall_request_duration_seconds_bucket{tenant="alpha",le="0.0025"} 1
moonwall_request_duration_seconds_bucket{tenant="alpha",le="0.005"} 1
moonwall_request_duration_seconds_bucket{tenant="alpha",le="0.01"} 1
moonwall_request_duration_seconds_bucket{tenant="alpha",le="0.025"} 1
moonwall_request_duration_seconds_bucket{tenant="alpha",le="0.05"} 1
moonwall_request_duration_seconds_bucket{tenant="alpha",le="0.1"} 1
moonwall_request_duration_seconds_bucket{tenant="alpha",le="0.25"} 1
moonwall_request_duration_seconds_bucket{tenant="alpha",le="0.5"} 1
moonwall_request_duration_seconds_bucket{tenant="alpha",le="1"} 1
moonwall_request_duration_seconds_bucket{tenant="alpha",le="2.5"} 1
moonwall_request_duration_seconds_bucket{tenant="alpha",le="5"} 1
moonwall_request_duration_seconds_bucket{tenant="alpha",le="10"} 1
moonwall_request_duration_seconds_bucket{tenant="alpha",le="+Inf"} 1
moonwall_request_duration_seconds_sum{tenant="alpha"} 0.0001
moonwall_request_duration_seconds_count{tenant="alpha"} 1
moonwall_request_duration_seconds_bucket{tenant="beta",le="0.0005"} 0
moonwall_request_duration_seconds_bucket{tenant="beta",le="0.001"} 1
moonwall_request_duration_seconds_bucket{tenant="beta",le="0.0025"} 2
moonwall_request_duration_seconds_bucket{tenant="beta",le="0.005"} 2
moonwall_request_duration_seconds_bucket{tenant="beta",le="0.01"} 2
moonwall_request_duration_seconds_bucket{tenant="beta",le="0.025"} 2
moonwall_request_duration_seconds_bucket{tenant="beta",le="0.05"} 3
moonwall_request_duration_seconds_bucket{tenant="beta",le="0.1"} 3
moonwall_request_duration_seconds_bucket{tenant="beta",le="0.25"} 3
moonwall_request_duration_seconds_bucket{tenant="beta",le="0.5"} 3
moonwall_request_duration_seconds_bucket{tenant="beta",le="1"} 3
moonwall_request_duration_seconds_bucket{tenant="beta",le="2.5"} 3
moonwall_request_duration_seconds_bucket{tenant="beta",le="5"} 3
moonwall_request_duration_seconds_bucket{tenant="beta",le="10"} 3
moonwall_request_duration_seconds_bucket{tenant="beta",le="+Inf"} 3
moonwall_request_duration_seconds_sum{tenant="beta"} 0.0327
moonwall_request_duration_seconds_count{tenant="beta"} 3
# HELP moonwall_queue_depth Requests of the tenant waiting in its admission queue.
# TYPE moonwall_queue_depth gauge
moonwall_queue_depth{tenant="alpha"} 1
moonwall_queue_depth{tenant="beta"} 0
# HELP moonwall_running Requests of the tenant running now.
# TYPE moonwall_running gauge
moonwall_running{tenant="alpha"} 0
moonwall_running{tenant="beta"} 1
# HELP moonwall_reloads_total Reloads of the tenant's policy and scripts, by result.
# TYPE moonwall_reloads_total counter
moonwall_reloads_total{tenant="alpha",result="failed"} 1
moonwall_reloads_total{tenant="alpha",result="ok"} 2
moonwall_reloads_total{tenant="beta",result="failed"} 0
moonwall_reloads_total{tenant="beta",result="ok"} 0
"#;
        assert_eq!(scenario().render(), expected);
    }

    #[test]
    fn render_is_deterministic_and_families_appear_once() {
        let metrics = scenario();
        let text = metrics.render();
        assert_eq!(text, metrics.render());
        for name in [
            "moonwall_requests_total",
            "moonwall_fuel_used_total",
            "moonwall_limit_hits_total",
            "moonwall_request_duration_seconds",
            "moonwall_queue_depth",
            "moonwall_running",
            "moonwall_reloads_total",
        ] {
            let help = format!("# HELP {name} ");
            let kind = format!("# TYPE {name} ");
            assert_eq!(text.matches(&help).count(), 1, "{name}");
            assert_eq!(text.matches(&kind).count(), 1, "{name}");
        }
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn empty_registry_renders_only_headers() {
        let text = Metrics::new().render();
        assert!(text.lines().all(|line| line.starts_with("# ")), "{text}");
        assert_eq!(text.lines().count(), 14);
    }

    #[test]
    fn label_sets_are_sorted() {
        let metrics = Metrics::new();
        let t = metrics.tenant("t");
        t.request(500, "b", 0, MS);
        t.request(200, "z", 0, MS);
        t.request(404, "not-found", 0, MS);
        t.request(200, "a", 0, MS);
        t.limit_hit("time");
        t.limit_hit("body");
        t.limit_hit("memory");
        metrics.tenant("b");
        metrics.tenant("a");
        let text = metrics.render();
        assert_eq!(
            series(&text, "moonwall_requests_total"),
            [
                r#"moonwall_requests_total{tenant="t",status="200",outcome="a"} 1"#,
                r#"moonwall_requests_total{tenant="t",status="200",outcome="z"} 1"#,
                r#"moonwall_requests_total{tenant="t",status="404",outcome="not-found"} 1"#,
                r#"moonwall_requests_total{tenant="t",status="500",outcome="b"} 1"#,
            ]
        );
        assert_eq!(
            series(&text, "moonwall_limit_hits_total"),
            [
                r#"moonwall_limit_hits_total{tenant="t",kind="body"} 1"#,
                r#"moonwall_limit_hits_total{tenant="t",kind="memory"} 1"#,
                r#"moonwall_limit_hits_total{tenant="t",kind="time"} 1"#,
            ]
        );
        assert_eq!(
            series(&text, "moonwall_running"),
            [
                r#"moonwall_running{tenant="a"} 0"#,
                r#"moonwall_running{tenant="b"} 0"#,
                r#"moonwall_running{tenant="t"} 0"#,
            ]
        );
    }

    #[test]
    fn histogram_is_cumulative_with_sum_and_count() {
        let metrics = Metrics::new();
        let t = metrics.tenant("h");
        // Exactly on a bound counts in that bucket (`le` is ≤).
        let durations = [
            Duration::ZERO,
            Duration::from_micros(500),
            Duration::from_micros(501),
            Duration::from_millis(10),
            Duration::from_millis(300),
            Duration::from_secs(10),
            Duration::from_secs(11),
            Duration::MAX,
        ];
        for d in durations {
            t.request(200, "ok", 0, d);
        }
        let text = metrics.render();
        let buckets: Vec<(String, u64)> = series(&text, "moonwall_request_duration_seconds_bucket")
            .into_iter()
            .map(|line| {
                let le = line
                    .split("le=\"")
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .unwrap()
                    .to_owned();
                let n = line.rsplit(' ').next().unwrap().parse().unwrap();
                (le, n)
            })
            .collect();
        let expected = [
            ("0.0005", 2),
            ("0.001", 3),
            ("0.0025", 3),
            ("0.005", 3),
            ("0.01", 4),
            ("0.025", 4),
            ("0.05", 4),
            ("0.1", 4),
            ("0.25", 4),
            ("0.5", 5),
            ("1", 5),
            ("2.5", 5),
            ("5", 5),
            ("10", 6),
            ("+Inf", 8),
        ];
        assert_eq!(buckets, expected.map(|(le, n)| (le.to_owned(), n)).to_vec());
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1));
        assert_eq!(
            series(&text, "moonwall_request_duration_seconds_count"),
            [r#"moonwall_request_duration_seconds_count{tenant="h"} 8"#]
        );
        // Duration::MAX saturates the sum rather than wrapping it.
        assert_eq!(
            series(&text, "moonwall_request_duration_seconds_sum"),
            [r#"moonwall_request_duration_seconds_sum{tenant="h"} 18446744073.709551615"#]
        );

        let metrics = Metrics::new();
        let t = metrics.tenant("h");
        t.request(200, "ok", 0, Duration::from_millis(1500));
        t.request(200, "ok", 0, Duration::from_nanos(1));
        t.request(200, "ok", 0, Duration::from_millis(250));
        let text = metrics.render();
        assert_eq!(
            series(&text, "moonwall_request_duration_seconds_sum"),
            [r#"moonwall_request_duration_seconds_sum{tenant="h"} 1.750000001"#]
        );
    }

    #[test]
    fn seconds_are_exact_decimals() {
        for (nanos, text) in [
            (0, "0"),
            (1, "0.000000001"),
            (500_000, "0.0005"),
            (1_000_000_000, "1"),
            (2_500_000_000, "2.5"),
            (u64::MAX, "18446744073.709551615"),
        ] {
            let mut out = String::new();
            seconds_into(&mut out, nanos);
            assert_eq!(out, text);
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let metrics = Metrics::new();
        let name = "a\"b\\c\nd";
        let t = metrics.tenant(name);
        t.request(200, "x\"y\\z\n", 7, MS);
        t.limit_hit("k\n\"\\");
        metrics.reload(name, false);
        let text = metrics.render();
        let tenant = r#"tenant="a\"b\\c\nd""#;
        assert!(text.contains(&format!(
            "moonwall_requests_total{{{tenant},status=\"200\",outcome=\"x\\\"y\\\\z\\n\"}} 1\n"
        )));
        assert!(text.contains(&format!(
            "moonwall_limit_hits_total{{{tenant},kind=\"k\\n\\\"\\\\\"}} 1\n"
        )));
        assert!(text.contains(&format!("moonwall_fuel_used_total{{{tenant}}} 7\n")));
        assert!(text.contains(&format!(
            "moonwall_reloads_total{{{tenant},result=\"failed\"}} 1\n"
        )));
        // No raw newline leaks into a series line: every line is a comment
        // or starts with a family name.
        assert!(
            text.lines()
                .all(|line| line.starts_with("# ") || line.starts_with("moonwall_")),
            "{text}"
        );
        // Only the one tenant: the escaped name is one series per gauge.
        assert_eq!(series(&text, "moonwall_queue_depth").len(), 1);
        assert_eq!(metrics.tenant(name).name(), name);
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

    async fn fetch(addr: std::net::SocketAddr, method: &str, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
            .await
            .expect("the server closes the connection")
            .unwrap();
        String::from_utf8(response).unwrap()
    }

    #[tokio::test]
    async fn serves_metrics_over_http() {
        let metrics = scenario();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(metrics.clone(), listener, async {
            let _ = stopped.await;
        }));

        let response = fetch(addr, "GET", "/metrics").await;
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("\r\ncontent-type: text/plain; version=0.0.4\r\n"),
            "{head}"
        );
        assert!(
            body.contains(
                "moonwall_requests_total{tenant=\"beta\",status=\"200\",outcome=\"ok\"} 2\n"
            ),
            "{body}"
        );
        assert_eq!(body, metrics.render());

        let response = fetch(addr, "GET", "/other").await;
        assert!(
            response.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{response}"
        );

        let response = fetch(addr, "POST", "/metrics").await;
        assert!(
            response.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{response}"
        );
        assert!(
            response
                .to_ascii_lowercase()
                .contains("\r\nallow: get, head\r\n")
        );

        let response = fetch(addr, "HEAD", "/metrics").await;
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("serve returns after shutdown")
            .unwrap()
            .unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
