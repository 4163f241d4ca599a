//! Every limit a request is held to, defined once: its key, the other names
//! it is known by, its range, its default and its documentation line. The
//! command line's limit flags, a site config's `[limits]`, tenant policies,
//! the server's ceilings and docs/policies.md (checked by a test) all come
//! from [`REQUEST_LIMITS`]. A capability's own bounds are defined the same
//! way, in its module (`caps::tcp::rules::OUTBOUND_LIMITS`).

use crate::sandbox::{EngineSettings, Limits};

/// One limit.
#[derive(Debug)]
pub struct LimitDef {
    /// Its key in policies and the server's ceilings.
    pub key: &'static str,
    /// Other names it has, kept working: site config keys and command-line
    /// flags written before the names were made one.
    pub aliases: &'static [&'static str],
    pub min: u64,
    pub max: u64,
    pub default: DefaultValue,
    /// What it bounds, as docs/policies.md says it.
    pub doc: &'static str,
}

/// What a limit is when nothing sets it.
#[derive(Debug)]
pub enum DefaultValue {
    Value(u64),
    /// Unbounded (no rate limit); `doc` says what that means.
    Unlimited {
        doc: &'static str,
    },
    /// Depends on the machine; `doc` says how.
    Computed {
        value: fn() -> u64,
        doc: &'static str,
    },
}

impl LimitDef {
    /// `value` if it is in range, else the message that says the range.
    pub fn check(&self, value: u64) -> Result<u64, String> {
        self.check_as(self.key, value)
    }

    /// [`LimitDef::check`], for the limit written as `name` (an alias).
    pub fn check_as(&self, name: &str, value: u64) -> Result<u64, String> {
        if (self.min..=self.max).contains(&value) {
            Ok(value)
        } else {
            Err(format!(
                "{name} must be between {} and {}",
                self.min, self.max
            ))
        }
    }

    /// The default, `None` when it is unbounded.
    pub fn default_value(&self) -> Option<u64> {
        match self.default {
            DefaultValue::Value(value) => Some(value),
            DefaultValue::Unlimited { .. } => None,
            DefaultValue::Computed { value, .. } => Some(value()),
        }
    }

    /// The limit's row in docs/policies.md: `| key | doc | default | range |`.
    pub fn doc_row(&self) -> String {
        let default = match &self.default {
            DefaultValue::Value(value) => grouped(*value),
            DefaultValue::Unlimited { doc } | DefaultValue::Computed { doc, .. } => doc.to_string(),
        };
        let max = if self.max == u64::MAX - 1 {
            "2^64-2".to_string()
        } else {
            grouped(self.max)
        };
        format!(
            "| `{}` | {} | {default} | {} to {max} |",
            self.key,
            self.doc,
            grouped(self.min)
        )
    }
}

/// `1234567` → `1,234,567`.
fn grouped(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (at, digit) in digits.chars().enumerate() {
        if at > 0 && (digits.len() - at).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// The limits of a request (and of a tenant's requests), in the order of
/// [`REQUEST_LIMITS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestLimit {
    Fuel,
    TimeoutMs,
    MemoryMib,
    MaxRequestBodyKib,
    MaxResponseBodyKib,
    MaxConcurrency,
    MaxQueue,
    QueueTimeoutMs,
    RequestsPerSecond,
    Burst,
    MaxInFlight,
}

impl RequestLimit {
    pub const ALL: [RequestLimit; 11] = [
        RequestLimit::Fuel,
        RequestLimit::TimeoutMs,
        RequestLimit::MemoryMib,
        RequestLimit::MaxRequestBodyKib,
        RequestLimit::MaxResponseBodyKib,
        RequestLimit::MaxConcurrency,
        RequestLimit::MaxQueue,
        RequestLimit::QueueTimeoutMs,
        RequestLimit::RequestsPerSecond,
        RequestLimit::Burst,
        RequestLimit::MaxInFlight,
    ];

    pub fn def(self) -> &'static LimitDef {
        &REQUEST_LIMITS[self as usize]
    }
}

/// A GiB, in KiB: the most of any byte limit.
pub const KIB_PER_GIB: u64 = 1 << 20;
/// The longest time any limit may be: an hour, in milliseconds.
pub const HOUR_MS: u64 = 3_600_000;

/// By default a tenant may hold all cores but one: whatever it runs, one
/// worker is always left for everyone else (bench/noisy: with a runaway
/// tenant on every core, another tenant's p99 triples).
fn cores_but_one() -> u64 {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get() as u64)
        .saturating_sub(1)
        .max(1)
}

/// By default a tenant may hold three quarters of the requests the server
/// can keep in flight: a tenant whose requests all wait on a slow upstream
/// leaves a quarter of the places to everyone else.
fn three_quarters_in_flight() -> u64 {
    (EngineSettings::default_max_in_flight() as u64 * 3 / 4).max(1)
}

/// Every request limit, in the order of [`RequestLimit`].
pub static REQUEST_LIMITS: [LimitDef; 11] = [
    LimitDef {
        key: "fuel",
        aliases: &["--fuel"],
        min: 1,
        max: u64::MAX - 1,
        default: DefaultValue::Value(Limits::DEFAULT_FUEL),
        doc: "fuel per request (about one unit per wasm instruction; 10^10 is just under a second of CPU)",
    },
    LimitDef {
        key: "timeout_ms",
        aliases: &["--timeout-ms"],
        min: 1,
        max: HOUR_MS,
        default: DefaultValue::Value(Limits::DEFAULT_TIMEOUT_MS),
        doc: "wall-clock time per request, from the start of its run",
    },
    LimitDef {
        key: "memory_mib",
        aliases: &["--memory-mib"],
        min: Limits::MIN_MEMORY_MIB as u64,
        max: Limits::MAX_MEMORY_MIB as u64,
        default: DefaultValue::Value(Limits::DEFAULT_MEMORY_MIB as u64),
        doc: "memory of the request's instance",
    },
    LimitDef {
        key: "max_request_body_kib",
        aliases: &["--max-body-kib", "--max-request-body-kib"],
        min: 0,
        max: KIB_PER_GIB,
        default: DefaultValue::Value(1024),
        doc: "request body; beyond it 413",
    },
    LimitDef {
        key: "max_response_body_kib",
        aliases: &[
            "max_output_kib",
            "--max-output-kib",
            "--max-response-body-kib",
        ],
        min: 0,
        max: KIB_PER_GIB,
        default: DefaultValue::Value(Limits::DEFAULT_OUTPUT_KIB as u64),
        doc: "response body the scripts may write; beyond it the request stops as a limit (503, or the response is cut if its head was sent). Site configs and the command line call it `max_output_kib`; for `moonwall exec` it bounds `print` and warnings",
    },
    LimitDef {
        key: "max_concurrency",
        aliases: &[],
        min: 1,
        max: 10_000,
        default: DefaultValue::Computed {
            value: cores_but_one,
            doc: "the number of cores minus one (at least 1): one core is always left to other tenants",
        },
        doc: "runs of this tenant executing Lua at once (CPU slots). A request waiting on I/O (`ngx.sleep`, a cosocket, a Redis dict, a subrequest, a slow client) gives its slot back and takes it again, waiting if it must, before its Lua code resumes",
    },
    LimitDef {
        key: "max_queue",
        aliases: &[],
        min: 0,
        max: 100_000,
        // A burst of requests that each need the CPU only briefly before
        // they wait on I/O (200 clients of a gateway at once) passes
        // through the queue; --max-connections bounds it too.
        default: DefaultValue::Value(1024),
        doc: "requests waiting to be admitted (for a place in flight and a first CPU slot); beyond it 503 with `Retry-After`. A burst of clients whose requests each need the CPU briefly before they wait on I/O passes through here",
    },
    LimitDef {
        key: "queue_timeout_ms",
        aliases: &[],
        min: 1,
        max: HOUR_MS,
        default: DefaultValue::Value(1000),
        doc: "longest wait in the queue; then 503 with `Retry-After`",
    },
    LimitDef {
        key: "requests_per_second",
        aliases: &[],
        min: 1,
        max: 1_000_000,
        default: DefaultValue::Unlimited { doc: "unlimited" },
        doc: "token-bucket rate of script requests; beyond it 429 with `Retry-After`",
    },
    LimitDef {
        key: "burst",
        aliases: &[],
        min: 1,
        max: 1_000_000,
        default: DefaultValue::Unlimited {
            doc: "`requests_per_second`",
        },
        doc: "requests the bucket saves up",
    },
    LimitDef {
        key: "max_in_flight",
        aliases: &[],
        min: 1,
        max: 100_000,
        default: DefaultValue::Computed {
            value: three_quarters_in_flight,
            doc: "three quarters of the server's default `--max-in-flight`: a quarter of the places is always left to other tenants",
        },
        doc: "requests of this tenant in flight at once: admitted and not finished, running or waiting on I/O. Each holds a sandbox instance, so this is bounded by memory, not by cores",
    },
];

/// The native stack guest code may use, in KiB: an engine setting of the
/// command line (`--max-stack-kib`), not a per-request limit.
pub static MAX_STACK_KIB: LimitDef = LimitDef {
    key: "max_stack_kib",
    aliases: &["--max-stack-kib"],
    min: 64,
    max: 65_536,
    default: DefaultValue::Value((EngineSettings::DEFAULT_WASM_STACK_BYTES / 1024) as u64),
    doc: "native stack guest code may use; Lua's own C-recursion limit normally comes first, this is the backstop",
};

/// The bounds on a server's connections, in the order of
/// [`CONNECTION_LIMITS`]: server-wide, not per tenant (a connection has no
/// tenant until its first request names a host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionLimit {
    HeaderTimeoutMs,
    IdleTimeoutMs,
    BodyTimeoutMs,
    MinBodyBytesPerSec,
    MaxConnectionsPerClient,
    SendTimeoutMs,
}

impl ConnectionLimit {
    pub const ALL: [ConnectionLimit; 6] = [
        ConnectionLimit::HeaderTimeoutMs,
        ConnectionLimit::IdleTimeoutMs,
        ConnectionLimit::BodyTimeoutMs,
        ConnectionLimit::MinBodyBytesPerSec,
        ConnectionLimit::MaxConnectionsPerClient,
        ConnectionLimit::SendTimeoutMs,
    ];

    pub fn def(self) -> &'static LimitDef {
        &CONNECTION_LIMITS[self as usize]
    }

    /// The default (each has one).
    pub fn default_value(self) -> u64 {
        self.def()
            .default_value()
            .expect("every connection limit has a default")
    }
}

/// Every bound on connections, in the order of [`ConnectionLimit`]: the
/// `[connections]` keys of a site config and of a server config, and the
/// flags of `moonwall serve` (the alias), which win over the file.
pub static CONNECTION_LIMITS: [LimitDef; 6] = [
    LimitDef {
        key: "header_timeout_ms",
        aliases: &["--header-timeout-ms"],
        min: 1,
        max: HOUR_MS,
        default: DefaultValue::Value(10_000),
        doc: "time to send a complete request head: the first one from the moment the connection is accepted (telling HTTP/1 from HTTP/2 included: a client that sends nothing, or only the HTTP/2 preface, is closed), each next HTTP/1 one from the end of the previous response. Then the connection is closed",
    },
    LimitDef {
        key: "idle_timeout_ms",
        aliases: &["--idle-timeout-ms"],
        min: 1,
        max: HOUR_MS,
        default: DefaultValue::Value(30_000),
        doc: "time a connection may have no request in progress once it has had one (an HTTP/2 connection with no open stream); then it is closed (HTTP/2: GOAWAY, then closed). An HTTP/1 connection waiting for its next request is also held to `header_timeout_ms`",
    },
    LimitDef {
        key: "body_timeout_ms",
        aliases: &["--body-timeout-ms"],
        min: 1,
        max: HOUR_MS,
        default: DefaultValue::Value(10_000),
        doc: "longest wait for more of a request body; then 408 and the connection is closed (an HTTP/2 stream is reset). The body is read before the request is admitted, so a stalled body holds no run or place in flight, only its connection",
    },
    LimitDef {
        key: "min_body_bytes_per_sec",
        aliases: &["--min-body-bytes-per-sec"],
        min: 1,
        max: KIB_PER_GIB << 10,
        default: DefaultValue::Value(1024),
        doc: "slowest a request body may arrive, on average, after its first `body_timeout_ms`: a body of N bytes must be in by `body_timeout_ms` plus N divided by this rate, else 408 as above (a client trickling a byte at a time is cut off too)",
    },
    LimitDef {
        key: "max_connections_per_client",
        aliases: &["--max-connections-per-client"],
        min: 1,
        max: 100_000,
        default: DefaultValue::Value(256),
        doc: "connections open at once from one client IP address; one more is closed as soon as it is accepted (logged at most once every 10 s, with the count refused meanwhile)",
    },
    LimitDef {
        key: "send_timeout_ms",
        aliases: &["--send-timeout-ms"],
        min: 1,
        max: HOUR_MS,
        default: DefaultValue::Value(60_000),
        doc: "longest a write to the client may wait for it to take more of a response (its socket full, HTTP/1 or HTTP/2), between two writes that make progress, not for the whole response (nginx's `send_timeout`); then the connection is closed, logged at info, and a script still writing to it ends as when the client goes away (`client-closed`)",
    },
];

/// The connection limits a file wrote, each checked (`None`: not written).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionValues([Option<u64>; 6]);

impl ConnectionValues {
    pub fn get(&self, limit: ConnectionLimit) -> Option<u64> {
        self.0[limit as usize]
    }

    pub fn set(&mut self, limit: ConnectionLimit, value: u64) {
        self.0[limit as usize] = Some(value);
    }
}

/// A value for each request limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitValues([u64; 11]);

impl LimitValues {
    /// Every limit at `value`.
    pub fn all(value: u64) -> LimitValues {
        LimitValues([value; 11])
    }
}

impl std::ops::Index<RequestLimit> for LimitValues {
    type Output = u64;
    fn index(&self, limit: RequestLimit) -> &u64 {
        &self.0[limit as usize]
    }
}

impl std::ops::IndexMut<RequestLimit> for LimitValues {
    fn index_mut(&mut self, limit: RequestLimit) -> &mut u64 {
        &mut self.0[limit as usize]
    }
}

/// Fail unless docs/policies.md has each of `defs`' rows as defined.
#[cfg(test)]
pub(crate) fn assert_documented(defs: &[LimitDef]) {
    assert_documented_in("policies.md", defs);
}

/// Fail unless `docs/DOC` has each of `defs`' rows as defined.
#[cfg(test)]
pub(crate) fn assert_documented_in(doc: &str, defs: &[LimitDef]) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(doc);
    let text = std::fs::read_to_string(path).unwrap();
    for row in defs.iter().map(LimitDef::doc_row) {
        assert!(
            text.lines().any(|line| line == row),
            "docs/{doc} lacks this row (or it differs):\n{row}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_in_the_order_of_the_enum() {
        let keys: Vec<&str> = RequestLimit::ALL.iter().map(|l| l.def().key).collect();
        assert_eq!(
            keys,
            [
                "fuel",
                "timeout_ms",
                "memory_mib",
                "max_request_body_kib",
                "max_response_body_kib",
                "max_concurrency",
                "max_queue",
                "queue_timeout_ms",
                "requests_per_second",
                "burst",
                "max_in_flight",
            ]
        );
        for def in &REQUEST_LIMITS {
            assert!(def.min <= def.max, "{}", def.key);
            if let Some(default) = def.default_value() {
                assert!(def.check(default).is_ok(), "{}'s default", def.key);
            }
        }
    }

    #[test]
    fn values_read_and_check_as_documented() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(1024), "1,024");
        assert_eq!(grouped(10_000_000_000), "10,000,000,000");
        assert_eq!(
            RequestLimit::MemoryMib.def().check(1).unwrap_err(),
            "memory_mib must be between 2 and 4095"
        );
        assert_eq!(
            RequestLimit::TimeoutMs.def().doc_row(),
            "| `timeout_ms` | wall-clock time per request, from the start of its run | 5,000 | 1 to 3,600,000 |"
        );
    }

    /// docs/policies.md's rows come from this table.
    #[test]
    fn the_policy_docs_show_every_limit_as_defined() {
        assert_documented(&REQUEST_LIMITS);
    }

    /// docs/serving.md's rows of connection bounds come from their table.
    #[test]
    fn the_serving_docs_show_every_connection_limit_as_defined() {
        let keys: Vec<&str> = ConnectionLimit::ALL.iter().map(|l| l.def().key).collect();
        let table: Vec<&str> = CONNECTION_LIMITS.iter().map(|def| def.key).collect();
        assert_eq!(keys, table);
        for limit in ConnectionLimit::ALL {
            assert!(limit.def().check(limit.default_value()).is_ok(), "{keys:?}");
        }
        assert_documented_in("serving.md", &CONNECTION_LIMITS);
    }
}
