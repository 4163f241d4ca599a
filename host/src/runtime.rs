//! The store data of every run, assembled in one place: the sandbox's part
//! ([`RunBase`]) and the capabilities' ([`RunCaps`], which holds the request
//! when the run serves one). This is the only module that knows both; below
//! it, the sandbox is generic over its store's data and each capability is
//! linked through a projection onto its state.
//!
//! [`Sandbox`] and [`PreparedGuest`] here are the sandbox's types for this
//! store: the ones the server, the tenants and the command line use.

use wasmtime::component::Linker;

use crate::caps::http::HttpState;
use crate::caps::{RequestCaps, RunCaps};
use crate::sandbox::{CpuSlots, HostWork, RunBase, RunData, RunStart};

/// The data of a run's store.
pub struct RunState {
    pub(crate) base: RunBase,
    pub(crate) caps: RunCaps,
}

/// What a run starts with beyond the sandbox's part.
#[derive(Default)]
pub struct Setup {
    /// What the run may use beyond computation.
    pub caps: RequestCaps,
    /// The request, when the run serves one.
    pub http: Option<HttpState>,
}

/// A run that serves no request, with `caps`.
impl From<RequestCaps> for Setup {
    fn from(caps: RequestCaps) -> Self {
        Setup { caps, http: None }
    }
}

impl RunData for RunState {
    type Setup = Setup;

    fn assemble(base: RunBase, setup: Setup, start: RunStart) -> Self {
        let mut caps = RunCaps::new(setup.caps, start);
        caps.http = setup.http;
        RunState { base, caps }
    }

    fn base(&self) -> &RunBase {
        &self.base
    }

    fn base_mut(&mut self) -> &mut RunBase {
        &mut self.base
    }

    fn into_base(self) -> RunBase {
        self.base
    }

    fn cpu(&self) -> &CpuSlots {
        &self.caps.cpu
    }

    fn host_work(&mut self) -> &mut HostWork {
        &mut self.caps.work
    }

    fn add_to_linker(linker: &mut Linker<Self>) -> wasmtime::Result<()> {
        crate::caps::add_to_linker(linker, |state| &mut state.caps)
    }
}

/// The sandbox whose runs have this store.
pub type Sandbox = crate::sandbox::Sandbox<RunState>;

/// A guest this sandbox's runs start from (its own, or a tenant's prepared
/// state).
pub type PreparedGuest = crate::sandbox::PreparedGuest<RunState>;

/// A run's setup for this store.
pub(crate) type RunSetup = crate::sandbox::run::RunSetup<RunState>;
