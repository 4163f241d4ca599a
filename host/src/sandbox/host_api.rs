//! The sandbox's own part of a run's store ([`RunBase`]) and the host side of
//! the core imports every run has, whatever layer assembles its store:
//! `output`, `clock` and `guard` (the bindings are [`crate::bindings`]).
//!
//! Everything arriving here comes from inside the sandbox and is treated as
//! hostile: output is counted against the run's cap before it is passed on,
//! and the guest's claims (such as "out of memory") are checked against what
//! the host itself saw.

use std::hash::{BuildHasher, Hasher};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::engine::RunLimiter;
use super::outcome::Limit;

pub(crate) use crate::bindings::moonwall::sandbox::output::Stream;

/// Where a run's output goes.
pub trait OutputSink: Send + std::any::Any {
    fn write(&mut self, stream: Stream, bytes: &[u8]);
}

/// Keeps a run's output in memory.
#[derive(Debug, Default, Clone)]
pub struct CapturedOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl OutputSink for CapturedOutput {
    fn write(&mut self, stream: Stream, bytes: &[u8]) {
        match stream {
            Stream::Stdout => self.stdout.extend_from_slice(bytes),
            Stream::Stderr => self.stderr.extend_from_slice(bytes),
        }
    }
}

/// Passes a run's output straight to this process's stdout and stderr, so a
/// script's output appears as it runs (and survives a limit that stops it).
#[derive(Debug, Default)]
pub struct InheritedOutput;

impl OutputSink for InheritedOutput {
    fn write(&mut self, stream: Stream, bytes: &[u8]) {
        use std::io::Write;
        // A closed pipe on our side is not the script's fault: drop the bytes.
        let _ = match stream {
            Stream::Stdout => std::io::stdout().write_all(bytes),
            Stream::Stderr => std::io::stderr().write_all(bytes),
        };
    }
}

/// Why the host stopped a guest from inside a host call.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HostStop {
    #[error("{0}")]
    Limit(Limit),
}

/// The sandbox's part of a run's store: the memory limiter, the output and
/// its cap, when the run started. The layers above hold it in their store
/// data ([`super::RunData`]) next to their own.
pub struct RunBase {
    pub(crate) limiter: RunLimiter,
    output: Box<dyn OutputSink>,
    output_written: usize,
    pub(crate) output_cap: usize,
    started: Instant,
    /// Keeps the epoch ticker running while this run's store lives.
    pub(crate) awake: Option<super::engine::Awake>,
    /// What the run owes a fuel pool it shares with other runs.
    pub(crate) fuel: super::fuel_pool::FuelAccount,
    /// The run's place in the instance pool (`None`: its deadline passed
    /// before one was free).
    pub(crate) instance: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl RunBase {
    pub(crate) fn new(memory_cap: usize, output_cap: usize, output: Box<dyn OutputSink>) -> Self {
        RunBase {
            limiter: RunLimiter::new(memory_cap),
            output,
            output_written: 0,
            output_cap,
            started: Instant::now(),
            awake: None,
            fuel: Default::default(),
            instance: None,
        }
    }

    pub(crate) fn into_output(self) -> Box<dyn OutputSink> {
        self.output
    }
}

impl crate::bindings::moonwall::sandbox::output::Host for RunBase {
    fn write(&mut self, stream: Stream, bytes: Vec<u8>) -> wasmtime::Result<()> {
        let room = self.output_cap - self.output_written;
        if bytes.len() > room {
            // Pass on what fits, so the cap is exact, then stop the run.
            self.output.write(stream, &bytes[..room]);
            self.output_written = self.output_cap;
            return Err(wasmtime::Error::new(HostStop::Limit(Limit::Output {
                limit_bytes: self.output_cap,
            })));
        }
        self.output_written += bytes.len();
        self.output.write(stream, &bytes);
        Ok(())
    }
}

impl crate::bindings::moonwall::sandbox::clock::Host for RunBase {
    fn wall_ns(&mut self) -> wasmtime::Result<u64> {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Ok(u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX))
    }

    fn run_ns(&mut self) -> wasmtime::Result<u64> {
        Ok(u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    fn random_seed(&mut self) -> wasmtime::Result<u64> {
        // std's RandomState is seeded from the OS once per thread and varies
        // per instance: enough to keep string-hash seeds unpredictable.
        Ok(std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish())
    }
}

impl crate::bindings::moonwall::sandbox::guard::Host for RunBase {
    fn memory_exhausted(&mut self) -> wasmtime::Result<()> {
        // An allocation failed even after Lua's emergency collection: either
        // the limiter refused to grow memory past the cap, or the request
        // could never fit (wasm32 addresses 4 GiB; the cap is below that).
        // A guest that calls this without cause only ends its own run.
        let limit = Limit::Memory {
            limit_bytes: self.limiter.memory_cap(),
        };
        Err(wasmtime::Error::new(HostStop::Limit(limit)))
    }
}
