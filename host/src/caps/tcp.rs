//! `ngx.socket.tcp`: outbound TCP to the destinations the policy grants.

use wasmtime::component::{HasSelf, Linker};

use crate::sandbox::host_api::RunState;
use crate::sandbox::host_api::moonwall::sandbox::tcp as wit;
use crate::tenants::policy::Capabilities;

/// The outbound destinations a tenant may reach.
#[derive(Debug, Default)]
pub struct Grant {}

impl Grant {
    pub fn from_policy(_capabilities: &Capabilities) -> Result<Grant, String> {
        Ok(Grant {})
    }
}

/// Per-run state.
#[derive(Default)]
pub struct State {}

impl wit::Host for State {}

pub(crate) fn add_to_linker(linker: &mut Linker<RunState>) -> wasmtime::Result<()> {
    wit::add_to_linker::<RunState, HasSelf<State>>(linker, |state| &mut state.caps.tcp)
}
