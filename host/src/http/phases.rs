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
//! after a limit, in a fresh instance with a small budget of its own, since
//! the request's instance was stopped.

use std::time::{Duration, Instant};

use crate::sandbox::host_api::moonwall::sandbox::http_types::{Handlers, Phase, Request, Source};
use crate::sandbox::{
    Limit, Limits, Outcome, Sandbox, SandboxError, block_on, classify_stop, lossy,
};

use crate::caps::{RequestCaps, RunCaps};

use super::guest_api::{HttpState, RequestLog, ResponseSink};

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
    }
}

/// The log phase's own budget after a limit stopped the request: a tenth of
/// the request's fuel and time, so a failing request costs at most 1.1 times
/// its budget.
fn log_only_limits(limits: &Limits) -> Limits {
    Limits {
        fuel: (limits.fuel / 10).max(1),
        timeout: (limits.timeout / 10).max(Duration::from_millis(1)),
        ..limits.clone()
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
        limits.validate()?;
        let started = Instant::now();
        let request_id = log.request_id;
        let discard_body = request.method == "HEAD";
        let mut store = self.new_store(limits, Box::new(LogOutput { request_id }), started)?;
        store.data_mut().http = Some(HttpState::new(sink, discard_body, log));
        store.data_mut().caps =
            RunCaps::new(caps.clone(), started + limits.timeout, limits.timeout);

        let outcome = match self.pre.instantiate_async(&mut store).await {
            Ok(guest) => match guest
                .moonwall_sandbox_http_handler()
                .call_handle(&mut store, request, handlers)
                .await
            {
                Ok(Ok(())) => HttpOutcome::Served,
                Ok(Err(error)) => HttpOutcome::LuaError {
                    phase: phase_name(error.phase),
                    message: lossy(&error.message),
                    traceback: lossy(&error.traceback),
                },
                Err(trap) => match classify_stop(&trap, limits, &self.settings) {
                    // Aborted after the memory limiter refused to grow.
                    Outcome::Fault { .. } if store.data().limiter.refused => {
                        HttpOutcome::LimitExceeded(Limit::Memory {
                            limit_bytes: limits.memory_bytes,
                        })
                    }
                    outcome => stopped(outcome),
                },
            },
            Err(_) if store.data().limiter.refused => HttpOutcome::LimitExceeded(Limit::Memory {
                limit_bytes: limits.memory_bytes,
            }),
            Err(error) if error.downcast_ref::<wasmtime::Trap>().is_some() => {
                stopped(classify_stop(&error, limits, &self.settings))
            }
            Err(error) => return Err(SandboxError::Instantiate(format!("{error:#}"))),
        };
        let fuel_left = store.get_fuel().unwrap_or(0);
        let state = store.into_data();
        let peak_memory_bytes = state.limiter.peak_memory;
        let mut http = state.http.expect("the HTTP state set above");
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
                tracing::error!(request_id, "{phase} phase: {message}\n{traceback}");
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
        let sink = if trapped && let Some(log_handler) = &handlers.log {
            self.log_only(request, log_handler, status, limits, http, caps)
                .await
        } else {
            http.into_sink()
        };
        let report = HttpReport {
            outcome,
            status,
            body_bytes,
            fuel_used: limits.fuel - fuel_left.min(limits.fuel),
            peak_memory_bytes,
            duration: started.elapsed(),
        };
        Ok((report, sink))
    }

    /// The log phase alone, in a fresh instance with its own small budget.
    async fn log_only(
        &self,
        request: &Request,
        log_handler: &Source,
        status: u16,
        limits: &Limits,
        http: HttpState,
        caps: RequestCaps,
    ) -> Box<dyn ResponseSink> {
        let limits = log_only_limits(limits);
        let request_id = http.request_id();
        let Ok(mut store) =
            self.new_store(&limits, Box::new(LogOutput { request_id }), Instant::now())
        else {
            return http.into_sink();
        };
        store.data_mut().http = Some(http);
        let started = Instant::now();
        store.data_mut().caps = RunCaps::new(caps, started + limits.timeout, limits.timeout);
        let result = match self.pre.instantiate_async(&mut store).await {
            Ok(guest) => {
                guest
                    .moonwall_sandbox_http_handler()
                    .call_log_only(&mut store, request, log_handler, status)
                    .await
            }
            Err(error) => Err(error),
        };
        if let Err(trap) = result {
            let stop = classify_stop(&trap, &limits, &self.settings);
            tracing::error!(request_id, "log phase stopped: {}", describe(&stop));
        }
        store
            .into_data()
            .http
            .expect("the HTTP state set above")
            .into_sink()
    }
}

fn stopped(outcome: Outcome) -> HttpOutcome {
    match outcome {
        Outcome::LimitExceeded(limit) => HttpOutcome::LimitExceeded(limit),
        other => HttpOutcome::Fault(describe(&other)),
    }
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::LimitExceeded(limit) => limit.to_string(),
        Outcome::Fault { trap } => trap.clone(),
        other => format!("{other:?}"),
    }
}

/// Lua warnings (`warn`) during a request go to the log.
struct LogOutput {
    request_id: u64,
}

impl crate::sandbox::OutputSink for LogOutput {
    fn write(&mut self, _stream: crate::sandbox::host_api::Stream, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim_end();
        if !text.is_empty() {
            tracing::warn!(request_id = self.request_id, "{text}");
        }
    }
}
