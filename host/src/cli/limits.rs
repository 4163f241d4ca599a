//! The limit flags every command that runs scripts shares. Their ranges and
//! defaults come from the one definition of each limit
//! ([`crate::site::limits`]); their names are the command line's own (kept
//! as they were), with the policy key's as an alias where it differs.

use std::time::Duration;

use clap::Args;

use crate::sandbox::{EngineSettings, Limits};
use crate::site::limits::{LimitDef, MAX_STACK_KIB, RequestLimit};

/// The value parser of a limit's flag: its range.
pub(crate) fn in_range(def: &LimitDef) -> clap::builder::RangedU64ValueParser {
    clap::value_parser!(u64).range(def.min..=def.max)
}

/// A limit's default, for a flag.
pub(crate) fn default_of(limit: RequestLimit) -> u64 {
    limit
        .def()
        .default_value()
        .expect("a limit the command line sets has a default")
}

#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Fuel for the run: about one unit per WebAssembly instruction.
    #[arg(long, value_name = "N", default_value_t = default_of(RequestLimit::Fuel),
          value_parser = in_range(RequestLimit::Fuel.def()))]
    pub fuel: u64,

    /// Wall-clock time limit, in milliseconds (at most an hour).
    #[arg(long, value_name = "N", default_value_t = default_of(RequestLimit::TimeoutMs),
          value_parser = in_range(RequestLimit::TimeoutMs.def()))]
    pub timeout_ms: u64,

    /// Memory limit of the sandbox, in MiB (2 to 4095).
    #[arg(long, value_name = "N", default_value_t = default_of(RequestLimit::MemoryMib),
          value_parser = in_range(RequestLimit::MemoryMib.def()))]
    pub memory_mib: u64,

    /// Output limit, in KiB (at most 1 GiB): print and warnings for `exec`,
    /// the response body for requests.
    #[arg(long, value_name = "N", visible_alias = "max-response-body-kib",
          default_value_t = default_of(RequestLimit::MaxResponseBodyKib),
          value_parser = in_range(RequestLimit::MaxResponseBodyKib.def()))]
    pub max_output_kib: u64,

    /// Native stack guest code may use, in KiB (64 to 65536). Lua's own
    /// C-recursion limit normally comes first; this is the backstop.
    #[arg(long, value_name = "N",
          default_value_t = MAX_STACK_KIB.default_value().expect("a default"),
          value_parser = in_range(&MAX_STACK_KIB))]
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use crate::site::limits::{CONNECTION_LIMITS, MAX_STACK_KIB, REQUEST_LIMITS};

    /// Every flag the limit table names exists, with the table's range.
    #[test]
    fn the_limit_flags_are_the_tables() {
        let cli = super::super::Cli::command();
        let mut flags = Vec::new();
        for command in cli.get_subcommands() {
            for arg in command.get_arguments() {
                let names = arg
                    .get_long()
                    .into_iter()
                    .chain(arg.get_all_aliases().unwrap_or_default());
                for name in names {
                    flags.push((format!("--{name}"), arg.clone()));
                }
            }
        }
        let defs = REQUEST_LIMITS
            .iter()
            .chain([&MAX_STACK_KIB])
            .chain(&CONNECTION_LIMITS);
        for def in defs {
            for alias in def.aliases.iter().filter(|a| a.starts_with("--")) {
                let (_, arg) = flags
                    .iter()
                    .find(|(name, _)| name == alias)
                    .unwrap_or_else(|| panic!("no flag {alias} (of {})", def.key));
                let below = (def.min > 0).then(|| (def.min - 1).to_string());
                let above = (def.max + 1).to_string();
                let accepts = |text: &str| {
                    clap::Command::new("t")
                        .arg((*arg).clone())
                        .try_get_matches_from(["t", alias, text])
                        .is_ok()
                };
                assert!(accepts(&def.min.to_string()), "{alias} refuses {}", def.min);
                assert!(accepts(&def.max.to_string()), "{alias} refuses {}", def.max);
                assert!(!accepts(&above), "{alias} accepts {above}");
                if let Some(below) = below {
                    assert!(!accepts(&below), "{alias} accepts {below}");
                }
            }
        }
    }
}
