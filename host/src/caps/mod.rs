//! Capabilities: what a script may use beyond computation, each granted by
//! the tenant's policy (`[capabilities]`) and denied otherwise.
//!
//! Every capability is a module of its own that owns four things, so that
//! adding one touches nothing else (the shape of Spin's "factors"):
//! - its WIT interface (`wit/<name>.wit`) and the host functions behind it,
//!   registered by its `add_to_linker`;
//! - its policy section: the keys of `[capabilities]` it reads, checked
//!   once into its config ([`policy`], [`Capabilities`]);
//! - its grant: what the policy allows, built once per tenant ([`Grants`]);
//! - its per-run state, kept in [`RunCaps`] and dropped with the instance.
//!
//! Its module says so by implementing [`Capability`] on a type of its own;
//! its one line in `capabilities!` (below) adds its field to
//! [`Capabilities`], [`Grants`] and [`RunCaps`], its host functions to the
//! linker and its section to the policy.
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
//! | [`upstream`] | `upstream` | a proxied location's content phase (`proxy = "http://NAME"`) |
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
pub mod upstream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::Linker;

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
    /// The roots TLS connections' certificates are verified against (the
    /// server config's `tls_ca_file`, else the system's), loaded once.
    pub tls_roots: Arc<tcp::tls::TlsRoots>,
}

/// What makes a capability, defined in its module: its policy section and
/// what that checks into, its grant, its per-run state, its host functions.
/// [`capabilities!`] below turns the list of them into the tenant's
/// [`Capabilities`], its [`Grants`], a run's [`RunCaps`] and the linker's
/// host functions.
pub trait Capability {
    /// Its keys of a policy's `[capabilities]` ([`policy::NoSection`] if it
    /// has none).
    type Section: policy::PolicySection<Config = Self::Config>;
    /// What its section checked, for the tenant.
    type Config: std::fmt::Debug + Clone + PartialEq + Eq + Default;
    /// What a tenant's policy grants, built once per tenant version.
    type Grant: Default + Send + Sync + 'static;
    /// Per-run state, dropped with the instance.
    type State: Default + Send + 'static;

    /// The grant of `config` for `tenant`; `previous`, the tenant's grant
    /// before a reload, keeps what did not change (a dict's contents).
    fn grant(
        tenant: &str,
        config: &Self::Config,
        previous: Option<&Self::Grant>,
        settings: &CapsSettings,
    ) -> Result<Self::Grant, String>;

    /// The state of a run that may use `request` (by default, empty).
    fn state(request: &RequestCaps) -> Self::State {
        let _ = request;
        Self::State::default()
    }

    /// Register its host functions, reaching its state in a store of `T`
    /// through `get`.
    fn add_to_linker<T: Send + 'static>(
        linker: &mut Linker<T>,
        get: Project<T>,
    ) -> wasmtime::Result<()>;
}

/// Every capability: one line each (`field: module::Type`), in the order of
/// their policy keys in messages. This is the list to extend.
macro_rules! capabilities {
    ($($(#[$doc:meta])* $name:ident: $cap:ty,)*) => {
        /// What a tenant may use beyond computation, as its policy's
        /// sections ([`policy`]) checked it: one field per capability;
        /// until one is granted, it is denied.
        #[derive(Debug, Clone, PartialEq, Eq, Default)]
        pub struct Capabilities {
            $($(#[$doc])* pub $name: <$cap as Capability>::Config,)*
        }

        /// What one tenant's policy grants, built once per tenant (and kept
        /// across reloads where unchanged, so that shared dicts keep their
        /// contents).
        #[derive(Default)]
        pub struct Grants {
            pub tenant: String,
            $(pub $name: <$cap as Capability>::Grant,)*
        }

        impl Grants {
            /// The grants of `capabilities` for `tenant`. `previous` is the
            /// tenant's grants before a reload: what did not change is kept
            /// (a shared dict keeps its contents).
            pub fn from_policy(
                tenant: &str,
                capabilities: &Capabilities,
                previous: Option<&Grants>,
                settings: &CapsSettings,
            ) -> Result<Grants, String> {
                let previous = previous.filter(|p| p.tenant == tenant);
                Ok(Grants {
                    tenant: tenant.to_string(),
                    $($name: <$cap as Capability>::grant(
                        tenant,
                        &capabilities.$name,
                        previous.map(|p| &p.$name),
                        settings,
                    )?,)*
                })
            }
        }

        /// The capabilities' state for one run.
        pub struct RunCaps {
            pub grants: Arc<Grants>,
            /// When the run's time is up: waits end there.
            pub deadline: Instant,
            /// The run's time limit, for the error that names it.
            pub time_limit: Duration,
            /// The CPU slots the run holds while its guest code executes,
            /// given back while it waits.
            pub cpu: crate::sandbox::CpuSlots,
            /// Host work paid for with the run's fuel, stopped at its
            /// deadline ([`crate::sandbox::meter`]).
            pub work: crate::sandbox::HostWork,
            $(pub $name: <$cap as Capability>::State,)*
        }

        impl RunCaps {
            pub fn new(request: RequestCaps, start: crate::sandbox::RunStart) -> RunCaps {
                RunCaps {
                    $($name: <$cap as Capability>::state(&request),)*
                    grants: request.grants,
                    work: crate::sandbox::HostWork::new(start.deadline, start.time_limit),
                    deadline: start.deadline,
                    time_limit: start.time_limit,
                    cpu: start.cpu,
                }
            }
        }

        /// Register every capability's host functions, each reaching its
        /// state in a store of `T` through `get`.
        pub fn add_to_linker<T: Send + 'static>(
            linker: &mut Linker<T>,
            get: Project<T>,
        ) -> wasmtime::Result<()> {
            $(<$cap as Capability>::add_to_linker(linker, get)?;)*
            Ok(())
        }

        /// Every capability's policy section.
        pub(crate) const SECTIONS: &[policy::Section] = &[
            $(policy::Section {
                keys: policy::fields_of::<<$cap as Capability>::Section>,
                read: |cx, capabilities| {
                    capabilities.$name =
                        policy::read_section::<<$cap as Capability>::Section>(cx)
                },
            },)*
        ];
    };
}

capabilities! {
    /// `ngx.sleep`, light threads, subrequests: nothing to grant.
    tasks: tasks::Tasks,
    /// Shared dicts by name, with their size in bytes.
    dict: dict::Dicts,
    /// `ngx.re`: computation, granted to every tenant.
    regex: regex::Regex,
    /// Outbound TCP (and HTTP over it): destinations, private ranges, bounds.
    tcp: tcp::Outbound,
    /// The operator's upstreams its proxied locations may pass requests to.
    upstream: upstream::Proxy,
    /// Directories to read, to `require` from, environment variables.
    files: files::Files,
    /// The response and the log: the most verbose `ngx.log` level kept.
    http: http::Http,
}

impl Grants {
    /// Nothing granted: every capability answers with its "not granted"
    /// error.
    pub fn none() -> Arc<Grants> {
        static NONE: std::sync::OnceLock<Arc<Grants>> = std::sync::OnceLock::new();
        NONE.get_or_init(|| Arc::new(Grants::default())).clone()
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
    /// The outbound sockets, connects and bytes received of the client's
    /// request and all its subrequests: one for the whole tree.
    pub outbound: Arc<tcp::RequestBudget>,
    /// The run is a tenant's init script, not a request: nothing may wait
    /// (no sleep, sockets or subrequests: the state it leaves is snapshotted,
    /// and no operation could outlive it).
    pub init: bool,
    /// A proxied location's upstream, and the client it proxies for.
    pub proxy: Option<upstream::ProxyTarget>,
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
            outbound: Arc::default(),
            init: false,
            proxy: None,
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

impl RunCaps {
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
        // Waiting counts against the run's time: at its deadline the run
        // stops, whatever it waited for (a write a client never lets
        // through, ...) is dropped.
        let deadline = tokio::time::Instant::from_std(self.deadline);
        let Ok(output) = tokio::time::timeout_at(deadline, future).await else {
            return Err(deadline_passed(self.time_limit));
        };
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
