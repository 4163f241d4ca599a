//! The registry's counters in the Prometheus text exposition format
//! (version 0.0.4), written by hand: [`Metrics::render`].
//!
//! The output is deterministic: tenants sorted by name, label sets sorted
//! (status numerically, then outcome; kinds by name), so that equal counts
//! give equal text. Label values are escaped as the format says; durations
//! are exact decimal seconds.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use super::{BUCKETS, Metrics, RequestCounts, TenantInner, lock};

/// The `Content-Type` of the text format: [`serve`](super::serve)'s answer
/// to `GET /metrics`.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

impl Metrics {
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

        status_outcome_family(
            &mut out,
            &tenants,
            "moonwall_requests_total",
            "Requests finished, by tenant, HTTP status and outcome.",
            |tenant| &tenant.requests,
        );
        status_outcome_family(
            &mut out,
            &tenants,
            "moonwall_subrequests_total",
            "Subrequests (ngx.location.capture) finished, by tenant, HTTP status and outcome.",
            |tenant| &tenant.subrequests,
        );

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
}

/// A counter family by status and outcome (requests, subrequests).
fn status_outcome_family(
    out: &mut String,
    tenants: &[Arc<TenantInner>],
    name: &str,
    help: &str,
    counts: impl Fn(&TenantInner) -> &Mutex<RequestCounts>,
) {
    family(out, name, "counter", help);
    for tenant in tenants {
        let mut rows: Vec<(u16, Box<str>, u64)> = {
            let counts = lock(counts(tenant));
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
            series_start(out, name, &tenant.name);
            let _ = write!(out, ",status=\"{status}\",outcome=\"");
            escape_into(out, &outcome);
            let _ = writeln!(out, "\"}} {n}");
        }
    }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::tenants::metrics::tests::{MS, scenario, series};

    #[test]
    fn renders_the_whole_scenario_exactly() {
        let expected = r#"# HELP moonwall_requests_total Requests finished, by tenant, HTTP status and outcome.
# TYPE moonwall_requests_total counter
moonwall_requests_total{tenant="alpha",status="429",outcome="rate-limited"} 1
moonwall_requests_total{tenant="beta",status="200",outcome="ok"} 2
moonwall_requests_total{tenant="beta",status="500",outcome="limit-fuel"} 1
# HELP moonwall_subrequests_total Subrequests (ngx.location.capture) finished, by tenant, HTTP status and outcome.
# TYPE moonwall_subrequests_total counter
moonwall_subrequests_total{tenant="beta",status="200",outcome="ok"} 1
moonwall_subrequests_total{tenant="beta",status="404",outcome="not-found"} 1
# HELP moonwall_fuel_used_total Fuel (guest instructions, roughly) used by the tenant's requests.
# TYPE moonwall_fuel_used_total counter
moonwall_fuel_used_total{tenant="alpha"} 0
moonwall_fuel_used_total{tenant="beta"} 1175
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
            "moonwall_subrequests_total",
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
        assert_eq!(text.lines().count(), 16);
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
}
