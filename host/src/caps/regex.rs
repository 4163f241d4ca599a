//! `ngx.re`: regular expressions on the `regex` crate (linear time).

use wasmtime::component::{HasSelf, Linker};

use crate::sandbox::host_api::RunState;
use crate::sandbox::host_api::moonwall::sandbox::regex as wit;
use crate::tenants::policy::Capabilities;

/// Regular expressions are computation: every tenant has them.
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

pub(crate) fn add_to_linker(linker: &mut Linker<RunState>) -> wasmtime::Result<()> {
    wit::add_to_linker::<RunState, HasSelf<State>>(linker, |state| &mut state.caps.regex)
}
