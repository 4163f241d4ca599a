//! How a run ended, as a typed result.

use std::fmt;
use std::time::Duration;

/// The report of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    pub outcome: Outcome,
    /// Fuel the run consumed (instantiation, the script, finalizers). Exact,
    /// except after the time limit: wasmtime 48 does not write back the fuel
    /// count that compiled code keeps in a register when an epoch interrupt
    /// stops it, so then this counts only up to the guest's last call out
    /// (a lower bound).
    pub fuel_used: u64,
    /// The high-water mark of the guest's linear memory, in bytes.
    pub peak_memory_bytes: usize,
    /// Wall-clock time from instantiation to the end of the run.
    pub duration: Duration,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every chunk ran to its end.
    Completed,
    /// An error no Lua code caught. `message` is `chunk:line: text` for
    /// errors raised from Lua; `traceback` starts with `stack traceback:`.
    LuaError { message: String, traceback: String },
    /// A chunk did not compile; `message` is `chunk:line: text`.
    SyntaxError { message: String },
    /// The run was stopped by one of its limits.
    LimitExceeded(Limit),
    /// The guest stopped for a reason that is neither Lua's nor a limit (a
    /// trap in the interpreter itself). Never expected: a moonwall bug.
    Fault { trap: String },
}

impl Outcome {
    /// The limit that stopped the run, if one did.
    pub fn limit(&self) -> Option<&Limit> {
        match self {
            Outcome::LimitExceeded(limit) => Some(limit),
            _ => None,
        }
    }
}

/// One line for logs and errors: the limit, the fault, or the Lua message.
impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Completed => f.write_str("completed"),
            Outcome::LuaError { message, .. } | Outcome::SyntaxError { message } => {
                f.write_str(message)
            }
            Outcome::LimitExceeded(limit) => limit.fmt(f),
            Outcome::Fault { trap } => f.write_str(trap),
        }
    }
}

/// A limit that stopped a run, with the value it was set to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limit {
    Fuel { limit: u64 },
    Time { limit: Duration },
    Memory { limit_bytes: usize },
    NativeStack { limit_bytes: usize },
    Output { limit_bytes: usize },
}

impl Limit {
    /// A short, stable name: `fuel`, `time`, `memory`, `native-stack`, `output`.
    pub fn kind(&self) -> &'static str {
        match self {
            Limit::Fuel { .. } => "fuel",
            Limit::Time { .. } => "time",
            Limit::Memory { .. } => "memory",
            Limit::NativeStack { .. } => "native-stack",
            Limit::Output { .. } => "output",
        }
    }
}

/// `fuel limit of 100000000 exhausted`, `time limit of 500 ms exceeded`, ...
impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Fuel { limit } => write!(f, "fuel limit of {limit} exhausted"),
            Limit::Time { limit } => write!(f, "time limit of {} ms exceeded", limit.as_millis()),
            Limit::Memory { limit_bytes } => {
                write!(f, "memory limit of {} exceeded", human_size(*limit_bytes))
            }
            Limit::NativeStack { limit_bytes } => {
                write!(
                    f,
                    "native stack limit of {} exceeded",
                    human_size(*limit_bytes)
                )
            }
            Limit::Output { limit_bytes } => {
                write!(f, "output limit of {} exceeded", human_size(*limit_bytes))
            }
        }
    }
}

/// `64 MiB`, `512 KiB`, `100 bytes`: exact, in the largest unit that divides.
fn human_size(bytes: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * 1024;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_name_themselves_with_their_value() {
        assert_eq!(
            Limit::Fuel { limit: 100_000_000 }.to_string(),
            "fuel limit of 100000000 exhausted"
        );
        assert_eq!(
            Limit::Time {
                limit: Duration::from_millis(500)
            }
            .to_string(),
            "time limit of 500 ms exceeded"
        );
        assert_eq!(
            Limit::Memory {
                limit_bytes: 64 << 20
            }
            .to_string(),
            "memory limit of 64 MiB exceeded"
        );
        assert_eq!(
            Limit::Output { limit_bytes: 1000 }.to_string(),
            "output limit of 1000 bytes exceeded"
        );
        assert_eq!(
            Limit::NativeStack {
                limit_bytes: 512 << 10
            }
            .to_string(),
            "native stack limit of 512 KiB exceeded"
        );
    }
}
