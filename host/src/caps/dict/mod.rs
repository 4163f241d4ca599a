//! `ngx.shared.DICT`: each tenant's shared dictionaries.

use wasmtime::component::{HasSelf, Linker};

use crate::sandbox::host_api::RunState;
use crate::sandbox::host_api::moonwall::sandbox::shared_dict as wit;
use crate::tenants::policy::Capabilities;

/// Where dicts live: this process's memory, or a Redis server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum BackendConfig {
    #[default]
    Memory,
}

/// A tenant's dicts.
#[derive(Default)]
pub struct Grant {}

impl Grant {
    pub fn from_policy(
        _tenant: &str,
        _capabilities: &Capabilities,
        _previous: Option<&Grant>,
        _backend: &BackendConfig,
    ) -> Result<Grant, String> {
        Ok(Grant {})
    }
}

/// Per-run state.
#[derive(Default)]
pub struct State {}

impl wit::Host for State {}

pub(crate) fn add_to_linker(linker: &mut Linker<RunState>) -> wasmtime::Result<()> {
    wit::add_to_linker::<RunState, HasSelf<State>>(linker, |state| &mut state.caps.dict)
}
