//! Capabilities: what a script may use beyond computation, each granted by
//! the tenant's policy (`[capabilities]`) and denied otherwise.
//!
//! Every capability is a module of its own that owns three things, so that
//! adding one touches nothing else (the shape of Spin's "factors"):
//! - its WIT interface (`wit/<name>.wit`) and the host functions behind it,
//!   registered by its `add_to_linker`;
//! - its grant: what the policy allows, built once per tenant ([`Grants`]);
//! - its per-run state, kept in [`RunCaps`] and dropped with the instance.
//!
//! The checks happen here, on the host side of the WIT boundary: the guest's
//! Lua wrappers only give scripts OpenResty's shapes and clear errors.
//!
//! | module | WIT | Lua |
//! |---|---|---|
//! | [`tasks`] | `tasks` | `ngx.sleep`, `ngx.thread.*`, `ngx.location.capture*` |
//! | [`dict`] | `shared-dict` | `ngx.shared.DICT` |
//! | [`regex`] | `regex` | `ngx.re.*` |
//! | [`tcp`] | `tcp` | `ngx.socket.tcp`, `resty.http` |
//! | [`files`] | `files`, `env` | `io.open`, `io.lines`, `require`, `os.getenv` |
//!
//! JSON (`cjson`) needs nothing from the host: it is pure computation inside
//! the guest.

pub mod dict;
pub mod files;
pub mod regex;
pub mod tasks;
pub mod tcp;

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::Linker;

use crate::sandbox::host_api::RunState;
use crate::tenants::policy::Capabilities;

/// Server-wide settings the capabilities need (from the server config, not
/// from tenants' policies).
#[derive(Debug, Clone, Default)]
pub struct CapsSettings {
    /// Where shared dicts live.
    pub dict_backend: dict::BackendConfig,
    /// What compiles the modules `require` loads from lib dirs, once per
    /// file version (the server's sandbox); without one, modules are
    /// handed to the guest as source text.
    pub module_compiler: Option<Arc<dyn files::ModuleCompiler>>,
}

/// What one tenant's policy grants, built once per tenant (and kept across
/// reloads where unchanged, so that shared dicts keep their contents).
#[derive(Default)]
pub struct Grants {
    pub tenant: String,
    pub dicts: dict::Grant,
    pub regex: regex::Grant,
    pub tcp: tcp::Grant,
    pub files: files::Grant,
}

impl Grants {
    /// Nothing granted: every capability answers with its "not granted"
    /// error.
    pub fn none() -> Arc<Grants> {
        static NONE: std::sync::OnceLock<Arc<Grants>> = std::sync::OnceLock::new();
        NONE.get_or_init(|| Arc::new(Grants::default())).clone()
    }

    /// The grants of `capabilities` for `tenant`. `previous` is the tenant's
    /// grants before a reload: what did not change is kept (a shared dict
    /// keeps its contents).
    pub fn from_policy(
        tenant: &str,
        capabilities: &Capabilities,
        previous: Option<&Grants>,
        settings: &CapsSettings,
    ) -> Result<Grants, String> {
        Ok(Grants {
            tenant: tenant.to_string(),
            dicts: dict::Grant::from_policy(
                tenant,
                capabilities,
                previous.map(|p| &p.dicts),
                &settings.dict_backend,
            )?,
            regex: regex::Grant::from_policy(capabilities),
            tcp: tcp::Grant::from_policy(capabilities)?,
            files: files::Grant::from_policy(capabilities, settings.module_compiler.clone()),
        })
    }
}

/// What a request's run may use: its tenant's grants, and for a request of
/// a server, how to run its subrequests.
#[derive(Clone)]
pub struct RequestCaps {
    pub grants: Arc<Grants>,
    pub subrequests: Option<Arc<dyn tasks::Subrequests>>,
    /// How deep in subrequests the request is (0: a client's request).
    pub depth: u32,
    /// The run is a tenant's init script, not a request: nothing may wait
    /// (no sleep, sockets or subrequests: the state it leaves is snapshotted,
    /// and no operation could outlive it).
    pub init: bool,
}

impl RequestCaps {
    /// Nothing granted, no subrequests.
    pub fn none() -> RequestCaps {
        RequestCaps::of(Grants::none())
    }

    pub fn of(grants: Arc<Grants>) -> RequestCaps {
        RequestCaps {
            grants,
            subrequests: None,
            depth: 0,
            init: false,
        }
    }

    /// What a tenant's init script may use: its grants, without waiting.
    pub fn for_init(grants: Arc<Grants>) -> RequestCaps {
        RequestCaps {
            init: true,
            ..RequestCaps::of(grants)
        }
    }
}

/// The capabilities' state for one run.
pub struct RunCaps {
    pub grants: Arc<Grants>,
    /// When the run's time is up: waits end there.
    pub deadline: Instant,
    /// The run's time limit, for the error that names it.
    pub time_limit: Duration,
    /// The CPU slots the run holds while its guest code executes, given
    /// back while it waits.
    pub cpu: crate::sandbox::CpuSlots,
    pub tasks: tasks::State,
    pub dict: dict::State,
    pub regex: regex::State,
    pub tcp: tcp::State,
    pub files: files::State,
}

impl RunCaps {
    pub fn new(
        request: RequestCaps,
        deadline: Instant,
        time_limit: Duration,
        cpu: crate::sandbox::CpuSlots,
    ) -> RunCaps {
        RunCaps {
            grants: request.grants,
            deadline,
            time_limit,
            cpu,
            tasks: tasks::State {
                depth: request.depth,
                subrequests: request.subrequests,
                ops: tasks::Ops::refusing_if(request.init),
            },
            dict: dict::State::default(),
            regex: regex::State::default(),
            tcp: tcp::State::default(),
            files: files::State::default(),
        }
    }

    /// Wait for `future` without holding the run's CPU slots: host work
    /// that finishes at once keeps them; otherwise they are given back while
    /// it waits, and taken again before the guest resumes.
    pub async fn off_cpu<T>(&mut self, future: impl Future<Output = T>) -> wasmtime::Result<T> {
        let mut future = std::pin::pin!(future);
        if let Some(output) = crate::sandbox::cpu::ready_now(&mut future).await {
            return Ok(output);
        }
        self.cpu.release();
        let output = future.await;
        self.back_on_cpu().await?;
        Ok(output)
    }

    /// Take the run's CPU slots again after a wait. The run's operations
    /// keep progressing meanwhile: a subrequest of this run may hold the
    /// very slot this run waits for, and it is polled only through its
    /// parent. The wait ends at the deadline, which stops the run.
    pub async fn back_on_cpu(&mut self) -> wasmtime::Result<()> {
        let acquired = {
            let acquire = self.cpu.acquire(self.deadline);
            tokio::pin!(acquire);
            tokio::select! {
                biased;
                acquired = &mut acquire => acquired,
                never = self.tasks.ops.progress() => match never {},
            }
        };
        acquired.map_err(|_| self.deadline_passed())
    }

    /// The error that stops a run whose deadline passed while it waited.
    pub fn deadline_passed(&self) -> wasmtime::Error {
        wasmtime::Error::new(crate::sandbox::host_api::HostStop::Limit(
            crate::sandbox::Limit::Time {
                limit: self.time_limit,
            },
        ))
    }
}

/// Register every capability's host functions.
pub(crate) fn add_to_linker(linker: &mut Linker<RunState>) -> wasmtime::Result<()> {
    tasks::add_to_linker(linker)?;
    dict::add_to_linker(linker)?;
    regex::add_to_linker(linker)?;
    tcp::add_to_linker(linker)?;
    files::add_to_linker(linker)?;
    Ok(())
}
