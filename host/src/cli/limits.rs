//! The limit flags every command that runs scripts shares.

use std::time::Duration;

use clap::Args;

use crate::sandbox::{EngineSettings, Limits};

#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Fuel for the run: about one unit per WebAssembly instruction.
    #[arg(long, value_name = "N", default_value_t = Limits::DEFAULT_FUEL,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub fuel: u64,

    /// Wall-clock time limit, in milliseconds.
    #[arg(long, value_name = "N", default_value_t = Limits::DEFAULT_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,

    /// Memory limit of the sandbox, in MiB (2 to 4095).
    #[arg(long, value_name = "N", default_value_t = Limits::DEFAULT_MEMORY_MIB as u64,
          value_parser = clap::value_parser!(u64).range(Limits::MIN_MEMORY_MIB as u64..=Limits::MAX_MEMORY_MIB as u64))]
    pub memory_mib: u64,

    /// Output limit, in KiB: print and warnings for `exec`, the response
    /// body for requests.
    #[arg(long, value_name = "N", default_value_t = Limits::DEFAULT_OUTPUT_KIB as u64,
          value_parser = clap::value_parser!(u64).range(0..=(1 << 30)))]
    pub max_output_kib: u64,

    /// Native stack guest code may use, in KiB (64 to 65536). Lua's own
    /// C-recursion limit normally comes first; this is the backstop.
    #[arg(long, value_name = "N", default_value_t = (EngineSettings::DEFAULT_WASM_STACK_BYTES / 1024) as u64,
          value_parser = clap::value_parser!(u64).range(64..=65536))]
    pub max_stack_kib: u64,
}

impl LimitArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            fuel: self.fuel,
            timeout: Duration::from_millis(self.timeout_ms),
            memory_bytes: self.memory_mib as usize * 1024 * 1024,
            output_bytes: self.max_output_kib as usize * 1024,
        }
    }

    /// Engine settings for a command that runs `instances` at a time.
    pub fn engine_settings(&self, instances: u32) -> EngineSettings {
        EngineSettings {
            max_instances: instances,
            max_wasm_stack_bytes: self.max_stack_kib as usize * 1024,
            ..EngineSettings::default()
        }
    }
}
