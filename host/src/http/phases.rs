//! One request through its phases, in one fresh instance.
//!
//! The guest runs rewrite, access and content, the filters as the response
//! leaves, and the log phase, all in one instance and under one budget of
//! fuel, time and memory (so `ngx.ctx` carries across). How it ends:
//!
//! | ending | response (if no head was sent yet) | log |
//! |---|---|---|
//! | served | the script's | - |
//! | Lua error in a phase | 500, generic page | error with phase, `script:line` and traceback |
//! | a limit (fuel, time, memory, stack, body size) | 503, generic page | error naming the limit |
//! | guest fault (a moonwall bug) | 500 | error |
//!
//! If the head was already sent, the response is cut short (the client sees
//! an incomplete body, never a clean end). The log phase runs in every case:
//! after a limit, in a fresh instance (the request's was stopped), on the
//! tenth of the request's fuel held back for it from the start, within the
//! request's memory, and for at most a tenth of its time limit (after the
//! response was sent): the request and its log phase together stay within
//! the request's fuel.

use std::sync::Arc;
use std::time::Duration;

use crate::bindings::moonwall::sandbox::http_types::{Handlers, Phase, Request, Source};
use crate::bindings::moonwall::sandbox::log;
use crate::caps::RequestCaps;
use crate::caps::http::{HttpState, RequestLog, ResponseSink};
use crate::runtime::{PreparedGuest, RunSetup, Sandbox, Setup};
use crate::sandbox::{
    CpuSlots, FuelPool, Limit, Limits, MemoryPool, Outcome, SandboxError, block_on, lossy,
};

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpOutcome {
    /// A complete response was sent.
    Served,
    /// A Lua error escaped a phase handler.
    LuaError {
        phase: &'static str,
        message: String,
        traceback: String,
    },
    /// A limit stopped the request.
    LimitExceeded(Limit),
    /// The client went away while the response was being written, and the
    /// script stopped on the write that failed.
    ClientClosed { phase: &'static str },
    /// The guest faulted (a moonwall bug).
    Fault(String),
}

impl HttpOutcome {
    /// A short word for access logs: `ok`, `lua-error`, `limit-fuel`, ...
    pub fn label(&self) -> String {
        match self {
            HttpOutcome::Served => "ok".into(),
            HttpOutcome::LuaError { .. } => "lua-error".into(),
            HttpOutcome::LimitExceeded(limit) => format!("limit-{}", limit.kind()),
            HttpOutcome::ClientClosed { .. } => "client-closed".into(),
            HttpOutcome::Fault(_) => "fault".into(),
        }
    }
}

/// The report of one request.
#[derive(Debug, Clone)]
pub struct HttpReport {
    pub outcome: HttpOutcome,
    /// The status the client received (0 if none could be sent).
    pub status: u16,
    pub body_bytes: u64,
    pub fuel_used: u64,
    pub peak_memory_bytes: usize,
    pub duration: Duration,
}

/// The status the host answers with when the script could not.
fn fallback_status(outcome: &HttpOutcome) -> u16 {
    match outcome {
        HttpOutcome::LimitExceeded(_) => 503,
        _ => 500,
    }
}

pub fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Rewrite => "rewrite",
        Phase::Access => "access",
        Phase::Content => "content",
        Phase::HeaderFilter => "header_filter",
        Phase::BodyFilter => "body_filter",
        Phase::Log => "log",
        Phase::Balancer => "balancer",
    }
}

/// The log phase's limits after a limit stopped the request: at most the
/// tenth of the request's fuel held back for it ([`LOG_SHARE`]), and a
/// tenth of its time.
fn log_only_limits(limits: &Limits) -> Limits {
    Limits {
        fuel: (limits.fuel / LOG_SHARE).max(1),
        timeout: (limits.timeout / LOG_SHARE as u32).max(Duration::from_millis(1)),
        ..limits.clone()
    }
}

/// A request with a log phase holds back this share (1/LOG_SHARE) of its
/// fuel from the start, for its log phase to run on after a limit.
const LOG_SHARE: u64 = 10;

/// One request to serve: what [`Sandbox::serve`] needs.
pub(crate) struct ServeJob<'a> {
    pub(crate) request: &'a Request,
    pub(crate) handlers: &'a Handlers,
    pub(crate) limits: &'a Limits,
    pub(crate) sink: Box<dyn ResponseSink>,
    pub(crate) log: RequestLog,
    pub(crate) caps: RequestCaps,
    /// The CPU slots the request's runs hold while guest code executes.
    pub(crate) cpu: CpuSlots,
    /// Where its runs start: the tenant's prepared state (its init script's),
    /// or `None` for the sandbox's own.
    pub(crate) guest: Option<Arc<PreparedGuest>>,
    /// The fuel the request shares with its subrequests (a server's
    /// request), or `None` for its own limit alone.
    pub(crate) fuel_pool: Option<Arc<FuelPool>>,
    /// The memory the request shares with its subrequests, likewise.
    pub(crate) memory_pool: Option<Arc<MemoryPool>>,
}

impl<'a> ServeJob<'a> {
    /// A request outside a server: no CPU slots to take, the sandbox's own
    /// prepared state.
    fn new(
        request: &'a Request,
        handlers: &'a Handlers,
        limits: &'a Limits,
        sink: Box<dyn ResponseSink>,
        log: RequestLog,
        caps: RequestCaps,
    ) -> Self {
        ServeJob {
            request,
            handlers,
            limits,
            sink,
            log,
            caps,
            cpu: CpuSlots::default(),
            guest: None,
            fuel_pool: None,
            memory_pool: None,
        }
    }
}

impl Sandbox {
    /// Run `request` through `handlers` in a fresh instance, the response
    /// going to `sink`. Blocks the calling thread; see
    /// [`Sandbox::serve_request_async`].
    pub fn serve_request(
        &self,
        request: &Request,
        handlers: &Handlers,
        limits: &Limits,
        sink: Box<dyn ResponseSink>,
        log: RequestLog,
        caps: RequestCaps,
    ) -> Result<(HttpReport, Box<dyn ResponseSink>), SandboxError> {
        block_on(self.serve_request_async(request, handlers, limits, sink, log, caps))
    }

    /// [`Sandbox::serve_request`] from a tenant's prepared state
    /// ([`Sandbox::prepare_tenant`]).
    #[allow(clippy::too_many_arguments)]
    pub fn serve_request_from(
        &self,
        guest: &Arc<PreparedGuest>,
        request: &Request,
        handlers: &Handlers,
        limits: &Limits,
        sink: Box<dyn ResponseSink>,
        log: RequestLog,
        caps: RequestCaps,
    ) -> Result<(HttpReport, Box<dyn ResponseSink>), SandboxError> {
        let job = ServeJob::new(request, handlers, limits, sink, log, caps);
        block_on(self.serve(ServeJob {
            guest: Some(guest.clone()),
            ..job
        }))
    }

    /// [`Sandbox::serve_request`] as a future, which yields at every epoch
    /// tick and while the response waits for the client.
    pub async fn serve_request_async(
        &self,
        request: &Request,
        handlers: &Handlers,
        limits: &Limits,
        sink: Box<dyn ResponseSink>,
        log: RequestLog,
        caps: RequestCaps,
    ) -> Result<(HttpReport, Box<dyn ResponseSink>), SandboxError> {
        self.serve(ServeJob::new(request, handlers, limits, sink, log, caps))
            .await
    }

    /// Serve one request: its phases in one run, and after a limit, the log
    /// phase in a run of its own.
    pub(crate) async fn serve(
        &self,
        job: ServeJob<'_>,
    ) -> Result<(HttpReport, Box<dyn ResponseSink>), SandboxError> {
        let ServeJob {
            request,
            handlers,
            limits,
            sink,
            log,
            caps,
            cpu,
            guest,
            fuel_pool,
            memory_pool,
        } = job;
        let request_id = log.request_id;
        let output = LogOutput { log: log.clone() };
        let discard_body = request.method == "HEAD";
        // With a log phase, a tenth of the fuel is held back from the start:
        // after a limit, the log phase runs on that (and whatever is left),
        // so that the request and its log phase stay within one budget.
        let fuel_pool = match (&handlers.log, fuel_pool) {
            (Some(_), None) => Some(Arc::new(FuelPool::new(limits.fuel))),
            (_, pool) => pool,
        };
        let held = match (&handlers.log, &fuel_pool) {
            (Some(_), Some(pool)) => Some(pool.hold(limits.fuel / LOG_SHARE)),
            _ => None,
        };
        let log_pools = (fuel_pool.clone(), memory_pool.clone());
        let mut run = self
            .start_run(RunSetup {
                limits: limits.clone(),
                output: Box::new(output.clone()),
                cpu,
                guest: guest.clone(),
                fuel_pool,
                memory_pool,
                setup: Setup {
                    caps: caps.clone(),
                    http: Some(HttpState::new(sink, discard_body, limits.output_bytes, log)),
                },
            })
            .await?;
        let result = match run.instantiate().await {
            Ok(guest) => {
                guest
                    .moonwall_sandbox_http_handler()
                    .call_handle(&mut run.store, request, handlers)
                    .await
            }
            Err(error) => Err(error),
        };
        let finished = run.finish(result);
        // Given back (for the log phase, or the rest of the tree).
        drop(held);
        let finished = finished?;
        let outcome = match finished.result {
            Ok(Ok(())) => HttpOutcome::Served,
            Ok(Err(error)) => HttpOutcome::LuaError {
                phase: phase_name(error.phase),
                message: lossy(&error.message),
                traceback: lossy(&error.traceback),
            },
            Err(stop) => stopped(stop),
        };
        let mut state = finished.state;
        let mut http = state.caps.http.take().expect("the HTTP state set above");
        // An error raised by a write to a client that had gone is the
        // client's doing, not the script's.
        let outcome = match outcome {
            HttpOutcome::LuaError { phase, .. } if http.client_gone => {
                HttpOutcome::ClientClosed { phase }
            }
            other => other,
        };

        match &outcome {
            HttpOutcome::Served => {}
            HttpOutcome::LuaError {
                phase,
                message,
                traceback,
            } => {
                let text = format!("{phase} phase: {message}\n{traceback}");
                http.log().failure(text.as_bytes());
            }
            HttpOutcome::LimitExceeded(limit) => tracing::error!(request_id, "stopped: {limit}"),
            HttpOutcome::ClientClosed { phase } => {
                tracing::info!(
                    request_id,
                    "{phase} phase: the client closed the connection"
                )
            }
            HttpOutcome::Fault(trap) => {
                tracing::error!(request_id, "the sandbox faulted: {trap} (a moonwall bug)")
            }
        }
        let complete = outcome == HttpOutcome::Served && http.status_sent.is_some();
        if !complete {
            if http.status_sent.is_some() {
                http.abort().await;
            } else {
                http.send_fallback(fallback_status(&outcome)).await;
            }
        }
        let trapped = matches!(
            outcome,
            HttpOutcome::LimitExceeded(_) | HttpOutcome::Fault(_)
        );
        let status = http.status_sent.unwrap_or(0);
        let body_bytes = http.body_bytes;
        let (sink, log_fuel) = if trapped && let Some(log_handler) = &handlers.log {
            // The log phase runs on the CPU slots the request holds, on the
            // fuel held back for it and within the request's memory.
            let cpu = std::mem::take(&mut state.caps.cpu);
            let (fuel_pool, memory_pool) = log_pools;
            let setup = RunSetup {
                limits: log_only_limits(limits),
                output: Box::new(output),
                cpu,
                guest,
                fuel_pool,
                memory_pool,
                setup: Setup {
                    caps,
                    http: Some(http),
                },
            };
            self.log_only(request, log_handler, status, setup).await
        } else {
            (http.into_sink(), 0)
        };
        let report = HttpReport {
            outcome,
            status,
            body_bytes,
            fuel_used: finished.fuel_used + log_fuel,
            peak_memory_bytes: finished.peak_memory_bytes,
            duration: finished.duration,
        };
        Ok((report, sink))
    }

    /// The log phase alone, in a fresh instance; the response's sink, and
    /// the fuel it used.
    async fn log_only(
        &self,
        request: &Request,
        log_handler: &Source,
        status: u16,
        setup: RunSetup,
    ) -> (Box<dyn ResponseSink>, u64) {
        let http = (setup.setup.http.as_ref()).expect("the log phase serves a request");
        let request_id = http.request_id();
        if let Err(error) = self.check_limits(&setup.limits) {
            tracing::error!(request_id, "log phase not run: {error}");
            return (setup.setup.http.expect("checked above").into_sink(), 0);
        }
        let mut run = self.start_checked_run(setup).await;
        let result = match run.instantiate().await {
            Ok(guest) => {
                guest
                    .moonwall_sandbox_http_handler()
                    .call_log_only(&mut run.store, request, log_handler, status)
                    .await
            }
            Err(error) => Err(error),
        };
        let (state, fuel) = match run.finish(result) {
            Ok(finished) => {
                if let Err(stop) = &finished.result {
                    tracing::error!(request_id, "log phase stopped: {stop}");
                }
                (finished.state, finished.fuel_used)
            }
            Err(unavailable) => {
                tracing::error!(request_id, "log phase not run: {}", unavailable.error);
                (*unavailable.state, 0)
            }
        };
        let sink = (state.caps.http)
            .expect("the HTTP state set above")
            .into_sink();
        (sink, fuel)
    }
}

fn stopped(outcome: Outcome) -> HttpOutcome {
    match outcome {
        Outcome::LimitExceeded(limit) => HttpOutcome::LimitExceeded(limit),
        other => HttpOutcome::Fault(other.to_string()),
    }
}

/// A request's Lua output (`print`, `io.write`, `warn`) goes to its log, as
/// guest text: escaped, under the tenant's `log_level` and the request's log
/// budget. Output is logged at `notice` (as nginx logs `print`), warnings at
/// `warn`.
#[derive(Clone)]
struct LogOutput {
    log: RequestLog,
}

impl crate::sandbox::OutputSink for LogOutput {
    fn write(&mut self, stream: crate::sandbox::host_api::Stream, bytes: &[u8]) {
        let text = bytes.trim_ascii_end();
        if text.is_empty() {
            return;
        }
        let level = match stream {
            crate::sandbox::host_api::Stream::Stdout => log::Level::Notice,
            crate::sandbox::host_api::Stream::Stderr => log::Level::Warn,
        };
        self.log.line(level, text);
    }
}
