//! `moonwall exec FILE.lua`: run a plain Lua program in the sandbox, like the
//! `lua` command but with hard limits.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::exit;
use crate::sandbox::{EngineSettings, InheritedOutput, Limits, Outcome, Program, Sandbox};

#[derive(Debug, Args)]
pub struct ExecArgs {
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

    /// Output limit (print and warnings together), in KiB.
    #[arg(long, value_name = "N", default_value_t = Limits::DEFAULT_OUTPUT_KIB as u64,
          value_parser = clap::value_parser!(u64).range(0..=(1 << 30)))]
    pub max_output_kib: u64,

    /// Native stack guest code may use, in KiB (64 to 65536). Lua's own
    /// C-recursion limit normally comes first; this is the backstop.
    #[arg(long, value_name = "N", default_value_t = (EngineSettings::DEFAULT_WASM_STACK_BYTES / 1024) as u64,
          value_parser = clap::value_parser!(u64).range(64..=65536))]
    pub max_stack_kib: u64,

    /// Run CHUNK before FILE, like `lua -e` (repeatable, in order).
    #[arg(
        short = 'e',
        long = "eval",
        value_name = "CHUNK",
        allow_hyphen_values = true
    )]
    pub eval: Vec<String>,

    /// After the run, print fuel used, peak memory and time to stderr.
    #[arg(long)]
    pub stats: bool,

    /// The Lua script to run.
    #[arg(value_name = "FILE.lua")]
    pub file: PathBuf,

    /// Arguments for the script: `...` and `arg[1]`, `arg[2]`, ...
    #[arg(
        value_name = "ARGS",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub args: Vec<String>,
}

impl ExecArgs {
    fn limits(&self) -> Limits {
        Limits {
            fuel: self.fuel,
            timeout: Duration::from_millis(self.timeout_ms),
            memory_bytes: self.memory_mib as usize * 1024 * 1024,
            output_bytes: self.max_output_kib as usize * 1024,
        }
    }
}

pub fn run(args: ExecArgs) -> u8 {
    let source = match std::fs::read(&args.file) {
        Ok(source) => source,
        Err(error) => {
            eprintln!("error: cannot read {}: {error}", args.file.display());
            return exit::USAGE;
        }
    };
    let name = args.file.display().to_string();
    let program = args
        .eval
        .iter()
        .fold(Program::default(), |program, chunk| {
            program.prelude("(command line)", chunk.as_bytes())
        })
        .then_script(&name, source)
        .with_args(args.args.clone());

    // One run at a time: a small pool is enough.
    let settings = EngineSettings {
        max_instances: 2,
        max_wasm_stack_bytes: args.max_stack_kib as usize * 1024,
        ..EngineSettings::default()
    };
    let sandbox = match Sandbox::new(settings) {
        Ok(sandbox) => sandbox,
        Err(error) => {
            eprintln!("error: {error}");
            return exit::INTERNAL;
        }
    };
    let report = match sandbox.run(&program, &args.limits(), InheritedOutput) {
        Ok((report, _)) => report,
        Err(error) => {
            eprintln!("error: {error}");
            return exit::INTERNAL;
        }
    };
    let _ = std::io::stdout().flush();

    if args.stats {
        eprintln!(
            "stats: fuel used {}, peak memory {} KiB, time {:.3} ms",
            report.fuel_used,
            report.peak_memory_bytes / 1024,
            report.duration.as_secs_f64() * 1000.0
        );
    }
    match report.outcome {
        Outcome::Completed => exit::OK,
        Outcome::LuaError { message, traceback } => {
            if traceback.is_empty() {
                eprintln!("error: {message}");
            } else {
                eprintln!("error: {message}\n{traceback}");
            }
            exit::LUA_ERROR
        }
        Outcome::SyntaxError { message } => {
            eprintln!("error: {message}");
            exit::LUA_ERROR
        }
        Outcome::LimitExceeded(limit) => {
            eprintln!("error: {limit}");
            exit::LIMIT
        }
        Outcome::Fault { trap } => {
            eprintln!(
                "error: the sandbox faulted ({trap}); this is a bug in moonwall, please report it"
            );
            exit::INTERNAL
        }
    }
}
