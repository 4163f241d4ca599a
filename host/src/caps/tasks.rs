//! Waiting without blocking: the table of a run's operations in progress
//! (timers, outbound I/O, subrequests), `ngx.sleep`, and subrequests.
//!
//! A capability starts an operation with [`Ops::start`], which keeps its
//! future here and gives the guest an id. The guest waits for any of its ids
//! with `wait-any` (its light threads are coroutines scheduled on that
//! wait), then collects the result with the capability's `finish-*`
//! function ([`Ops::finish`]). Futures make progress only while the guest
//! waits; the instance is suspended then, its deadline still running.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};

use super::RunCaps;
use crate::bindings::moonwall::sandbox::tasks as wit;

/// Most operations one run may have in progress at once.
pub const MAX_PENDING_OPS: usize = 1024;

/// Longest `ngx.sleep` (the run's deadline usually comes first).
pub const MAX_SLEEP: Duration = Duration::from_secs(24 * 3600);

type OpFuture = Pin<Box<dyn Future<Output = Box<dyn Any + Send>> + Send>>;

enum Op {
    Running(OpFuture),
    Done(Box<dyn Any + Send>),
}

/// A run's operations in progress, by id.
#[derive(Default)]
pub struct Ops {
    last_id: u32,
    ops: HashMap<u32, Op>,
    /// The run may not wait at all (a tenant's init script).
    refused: bool,
}

impl Ops {
    /// Operations for a run; with `refuse`, every one is refused, as
    /// OpenResty disables waiting in `init_by_lua`.
    pub fn refusing_if(refuse: bool) -> Ops {
        Ops {
            refused: refuse,
            ..Ops::default()
        }
    }

    /// Keep `future` as a new operation; its id, or the error for a run with
    /// too many in progress.
    pub fn start<T: Send + 'static>(
        &mut self,
        future: impl Future<Output = T> + Send + 'static,
    ) -> Result<u32, String> {
        if self.refused {
            return Err("API disabled in the context of init_by_lua*".into());
        }
        if self.ops.len() >= MAX_PENDING_OPS {
            return Err(format!(
                "too many operations in progress (at most {MAX_PENDING_OPS})"
            ));
        }
        let mut id = self.last_id.wrapping_add(1).max(1);
        while self.ops.contains_key(&id) {
            id = id.wrapping_add(1).max(1);
        }
        self.last_id = id;
        let boxed: OpFuture =
            Box::pin(async move { Box::new(future.await) as Box<dyn Any + Send> });
        self.ops.insert(id, Op::Running(boxed));
        Ok(id)
    }

    /// Take the result of the finished operation `id`, which must have been
    /// started with a future whose output is `T`.
    pub fn finish<T: 'static>(&mut self, id: u32) -> Result<T, String> {
        match self.ops.get(&id) {
            None => return Err(format!("no operation {id}")),
            Some(Op::Running(_)) => return Err(format!("operation {id} has not finished")),
            Some(Op::Done(output)) if !output.is::<T>() => {
                return Err(format!("operation {id} is of another kind"));
            }
            Some(Op::Done(_)) => {}
        }
        match self.ops.remove(&id) {
            Some(Op::Done(output)) => Ok(*output.downcast::<T>().expect("checked above")),
            _ => unreachable!("checked above"),
        }
    }

    /// Drop operation `id` and whatever its future holds.
    pub fn cancel(&mut self, id: u32) {
        self.ops.remove(&id);
    }

    /// How many operations are kept (running or finished, not collected).
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Make every operation progress, forever: what a run does while it
    /// waits for something that is not one of its operations.
    pub async fn progress(&mut self) -> std::convert::Infallible {
        std::future::poll_fn(|cx| {
            for op in self.ops.values_mut() {
                if let Op::Running(future) = op
                    && let Poll::Ready(output) = future.as_mut().poll(cx)
                {
                    *op = Op::Done(output);
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Wait until one of `ids` has finished; `None` once `wait` (if any) is
    /// over first. Every id must be known. All operations progress meanwhile.
    pub async fn wait_any(
        &mut self,
        ids: &[u32],
        wait: Option<Duration>,
    ) -> Result<Option<u32>, String> {
        if let Some(unknown) = ids.iter().find(|id| !self.ops.contains_key(id)) {
            return Err(format!("no operation {unknown}"));
        }
        let mut timer = wait.map(|wait| Box::pin(tokio::time::sleep(wait)));
        std::future::poll_fn(|cx| {
            // Every operation makes progress while the guest waits, not
            // only those it waits for: a second subrequest or a thread's
            // read runs meanwhile.
            for op in self.ops.values_mut() {
                if let Op::Running(future) = op
                    && let Poll::Ready(output) = future.as_mut().poll(cx)
                {
                    *op = Op::Done(output);
                }
            }
            if let Some(id) = ids
                .iter()
                .find(|id| matches!(self.ops.get(id), Some(Op::Done(_))))
            {
                return Poll::Ready(Ok(Some(*id)));
            }
            match timer.as_mut().map(|timer| timer.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(Ok(None)),
                _ => Poll::Pending,
            }
        })
        .await
    }
}

/// Runs subrequests for `ngx.location.capture`: the server routes each
/// inside the same tenant and runs it in an instance of its own, within
/// bounds on their number and depth (host/src/http/subrequests.rs).
pub trait Subrequests: Send + Sync {
    /// Start `request` at `depth` (1: a subrequest of a client's request),
    /// or refuse it.
    #[allow(clippy::type_complexity)]
    fn start(
        self: Arc<Self>,
        request: wit::Subrequest,
        depth: u32,
    ) -> Result<Pin<Box<dyn Future<Output = Captured> + Send>>, String>;
}

/// A finished subrequest: its response, and the share of the request's
/// memory that response holds on the host until the parent collects it.
pub struct Captured {
    pub response: Result<wit::Subresponse, String>,
    pub held: Option<crate::sandbox::memory_pool::Reservation>,
}

/// Per-run state: the operations, and how to start subrequests.
#[derive(Default)]
pub struct State {
    pub ops: Ops,
    /// How deep this run is in subrequests (0: a client's request).
    pub depth: u32,
    /// The subrequest runner of this run (a server's request), if any.
    pub subrequests: Option<Arc<dyn Subrequests>>,
}

impl wit::Host for RunCaps {
    async fn wait_any(
        &mut self,
        ops: Vec<u32>,
        timeout_ms: Option<u32>,
    ) -> wasmtime::Result<Result<Option<u32>, String>> {
        let left = self
            .deadline
            .saturating_duration_since(std::time::Instant::now());
        let wait = timeout_ms.map(|ms| Duration::from_millis(ms.into()));
        // The run's deadline ends any wait: the run is stopped there.
        let (wait, capped) = match wait {
            Some(wait) if wait < left => (wait, false),
            _ => (left, true),
        };
        // The run waits off the CPU: its slots go to other runs meanwhile.
        let (waited, released) = {
            let mut waiting = std::pin::pin!(self.tasks.ops.wait_any(&ops, Some(wait)));
            match crate::sandbox::cpu::ready_now(&mut waiting).await {
                Some(waited) => (waited, false),
                None => {
                    self.cpu.release();
                    (waiting.await, true)
                }
            }
        };
        if released {
            self.back_on_cpu().await?;
        }
        match waited {
            Ok(None) if capped => Err(self.deadline_passed()),
            result => Ok(result),
        }
    }

    async fn cancel(&mut self, op: u32) -> wasmtime::Result<()> {
        self.tasks.ops.cancel(op);
        Ok(())
    }

    async fn sleep(&mut self, ms: u32) -> wasmtime::Result<Result<u32, String>> {
        let wait = Duration::from_millis(ms.into()).min(MAX_SLEEP);
        Ok(self.tasks.ops.start(tokio::time::sleep(wait)))
    }

    async fn finish_sleep(&mut self, op: u32) -> wasmtime::Result<Result<(), String>> {
        Ok(self.tasks.ops.finish::<()>(op))
    }

    async fn capture(&mut self, request: wit::Subrequest) -> wasmtime::Result<Result<u32, String>> {
        let Some(runner) = self.tasks.subrequests.clone() else {
            return Ok(Err(
                "subrequests are only available to requests served by moonwall serve".into(),
            ));
        };
        Ok(runner
            .start(request, self.tasks.depth + 1)
            .and_then(|future| self.tasks.ops.start(future)))
    }

    async fn finish_capture(
        &mut self,
        op: u32,
    ) -> wasmtime::Result<Result<wit::Subresponse, String>> {
        Ok(
            // The response's reservation is given back as it goes to the
            // guest, whose memory is counted from there on.
            match self.tasks.ops.finish::<Captured>(op) {
                Ok(captured) => captured.response,
                Err(error) => Err(error),
            },
        )
    }
}

/// The capability: nothing to grant; per run, its operations in progress.
pub struct Tasks;

impl super::Capability for Tasks {
    type Section = super::policy::NoSection;
    type Config = ();
    type Grant = ();
    type State = State;

    fn grant(_: &str, _: &(), _: Option<&()>, _: &super::CapsSettings) -> Result<(), String> {
        Ok(())
    }

    fn state(request: &super::RequestCaps) -> State {
        State {
            depth: request.depth,
            subrequests: request.subrequests.clone(),
            ops: Ops::refusing_if(request.init),
        }
    }

    fn add_to_linker<T: Send + 'static>(
        linker: &mut Linker<T>,
        get: super::Project<T>,
    ) -> wasmtime::Result<()> {
        wit::add_to_linker::<T, HasSelf<RunCaps>>(linker, get)
    }
}
