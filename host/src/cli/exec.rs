//! `moonwall exec FILE.lua`: run a plain Lua program in the sandbox, like the
//! `lua` command but with hard limits.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use super::exit;
use super::limits::LimitArgs;
use crate::runtime::Sandbox;
use crate::sandbox::{InheritedOutput, Outcome, Program};

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub limits: LimitArgs,

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
    let settings = args.limits.engine_settings(2);
    let sandbox = match Sandbox::new(settings) {
        Ok(sandbox) => sandbox,
        Err(error) => {
            eprintln!("error: {error}");
            return exit::INTERNAL;
        }
    };
    let report = match sandbox.run(&program, &args.limits.limits(), InheritedOutput) {
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
