//! Read-only files (`io.open`, `io.lines`), Lua modules (`require`) and the
//! environment (`os.getenv`), as far as the policy grants them.

use wasmtime::component::{HasSelf, Linker};

use crate::sandbox::host_api::RunState;
use crate::sandbox::host_api::moonwall::sandbox::{env as env_wit, files as wit};
use crate::tenants::policy::Capabilities;

/// The directories and environment names a tenant may read.
#[derive(Debug, Default)]
pub struct Grant {}

impl Grant {
    pub fn from_policy(_capabilities: &Capabilities) -> Grant {
        Grant {}
    }
}

/// Per-run state.
#[derive(Default)]
pub struct State {}

impl wit::Host for State {}
impl env_wit::Host for State {}

pub(crate) fn add_to_linker(linker: &mut Linker<RunState>) -> wasmtime::Result<()> {
    wit::add_to_linker::<RunState, HasSelf<State>>(linker, |state| &mut state.caps.files)?;
    env_wit::add_to_linker::<RunState, HasSelf<State>>(linker, |state| &mut state.caps.files)
}
