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
//! | [`http`] | `response`, `log`, `codec`, `http-types` | the response, `ngx.log`, `ngx.md5` and the other digests |
//!
//! JSON (`cjson`) needs nothing from the host: it is pure computation inside
//! the guest.
//!
//! Each capability's host functions are implemented on [`RunCaps`] and
//! linked through a projection (`add_to_linker(linker, get)`, as
//! wasmtime-wasi-http does): no capability names the store's type, which
//! `crate::runtime` assembles above them.

pub mod dict;
pub mod files;
pub mod http;
pub mod policy;
pub mod regex;
pub mod tasks;
pub mod tcp;

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::Linker;

use crate::bindings::moonwall::sandbox::log::Level;

/// What a tenant may use beyond computation, as its policy's sections
/// ([`policy`]) checked it; until one is granted, it is denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// Shared dicts by name, with their size in bytes.
    pub shared_dicts: Vec<(String, u64)>,
    /// Outbound destinations, `scheme://host[:port]` (host may be `*.name`).
    pub outbound: Vec<policy::Written<tcp::rules::Destination>>,
    /// Non-public addresses outbound connections may reach (`addr[/bits]`).
    pub outbound_private: Vec<policy::Written<tcp::rules::AddressRange>>,
    /// Per-request bounds on outbound connections, and the keepalive pool's.
    pub outbound_limits: tcp::rules::OutboundLimits,
    /// Directories scripts may read (real paths, inside the allowed roots).
    pub read_dirs: Vec<std::path::PathBuf>,
    /// Directories `require` loads Lua modules from.
    pub lib_dirs: Vec<std::path::PathBuf>,
    /// Environment variables `os.getenv` may see.
    pub env: Vec<String>,
    /// The most verbose `ngx.log` level that reaches the server's log.
    pub log_level: Level,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            shared_dicts: Vec::new(),
            outbound: Vec::new(),
            outbound_private: Vec::new(),
            outbound_limits: Default::default(),
            read_dirs: Vec::new(),
            lib_dirs: Vec::new(),
            env: Vec::new(),
            log_level: Level::Warn,
        }
    }
}

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
            tcp: tcp::Grant::from_policy(capabilities),
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

impl Default for RequestCaps {
    fn default() -> Self {
        RequestCaps::none()
    }
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
    /// The request, when the run serves one: its response and log lines.
    pub http: Option<http::HttpState>,
    pub tasks: tasks::State,
    pub dict: dict::State,
    pub regex: regex::State,
    pub tcp: tcp::State,
    pub files: files::State,
}

impl RunCaps {
    pub fn new(
        request: RequestCaps,
        http: Option<http::HttpState>,
        start: crate::sandbox::RunStart,
    ) -> RunCaps {
        RunCaps {
            grants: request.grants,
            deadline: start.deadline,
            time_limit: start.time_limit,
            cpu: start.cpu,
            http,
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
        self.waiting().off_cpu(future).await
    }

    /// Take the run's CPU slots again after a wait (see
    /// [`Waiting::back_on_cpu`]).
    pub async fn back_on_cpu(&mut self) -> wasmtime::Result<()> {
        self.waiting().back_on_cpu().await
    }

    /// The error that stops a run whose deadline passed while it waited.
    pub fn deadline_passed(&self) -> wasmtime::Error {
        deadline_passed(self.time_limit)
    }

    /// What waiting needs, borrowed apart from the capabilities' own state.
    fn waiting(&mut self) -> Waiting<'_> {
        Waiting {
            cpu: &mut self.cpu,
            ops: &mut self.tasks.ops,
            deadline: self.deadline,
            time_limit: self.time_limit,
        }
    }
}

/// The parts of a run's [`RunCaps`] that a wait off the CPU uses, so that a
/// capability can wait while it holds its own state borrowed.
pub struct Waiting<'a> {
    cpu: &'a mut crate::sandbox::CpuSlots,
    ops: &'a mut tasks::Ops,
    deadline: Instant,
    time_limit: Duration,
}

impl Waiting<'_> {
    /// [`RunCaps::off_cpu`].
    pub async fn off_cpu<T>(mut self, future: impl Future<Output = T>) -> wasmtime::Result<T> {
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
                never = self.ops.progress() => match never {},
            }
        };
        acquired.map_err(|_| deadline_passed(self.time_limit))
    }
}

/// The error that stops a run whose deadline (of `time_limit`) passed while
/// it waited.
fn deadline_passed(time_limit: Duration) -> wasmtime::Error {
    wasmtime::Error::new(crate::sandbox::host_api::HostStop::Limit(
        crate::sandbox::Limit::Time { limit: time_limit },
    ))
}

/// Where a store of `T` keeps its capabilities' state.
pub type Project<T> = fn(&mut T) -> &mut RunCaps;

/// Register every capability's host functions, each reaching its state in
/// a store of `T` through `get`. Adding a capability adds its line here.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: Project<T>,
) -> wasmtime::Result<()> {
    http::add_to_linker(linker, get)?;
    tasks::add_to_linker(linker, get)?;
    dict::add_to_linker(linker, get)?;
    regex::add_to_linker(linker, get)?;
    tcp::add_to_linker(linker, get)?;
    files::add_to_linker(linker, get)?;
    Ok(())
}
