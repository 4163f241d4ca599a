//! The `moonwall` command line. Its commands, flags and exit codes are an
//! interface that users and tools script against: extend it, never rename.

mod check;
mod exec;
mod limits;
mod request;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit codes shared by every command.
pub mod exit {
    /// The script ran to completion.
    pub const OK: u8 = 0;
    /// A Lua error or syntax error reached the top level.
    pub const LUA_ERROR: u8 = 1;
    /// The command line was wrong, or FILE could not be read.
    pub const USAGE: u8 = 2;
    /// A limit (fuel, time, memory, native stack, output) stopped the run.
    pub const LIMIT: u8 = 3;
    /// moonwall itself failed (the engine could not start, or the sandbox
    /// faulted): a bug or a broken installation, never the script's doing.
    pub const INTERNAL: u8 = 4;
}

const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  the script completed
  1  Lua error or syntax error (FILE:LINE: message and a traceback on stderr)
  2  usage error: bad flag, unreadable file
  3  stopped by a limit (stderr names it: `error: fuel limit of N exhausted`)
  4  moonwall itself failed (a bug: please report it)";

#[derive(Debug, Parser)]
#[command(name = "moonwall", version, about = "A security-first host for untrusted Lua scripts", after_help = EXIT_CODES_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run FILE as a plain Lua 5.4 program in the sandbox.
    #[command(after_help = EXIT_CODES_HELP)]
    Exec(exec::ExecArgs),
    /// Run one request through the phase scripts, without a server, and print
    /// the response (status line, headers, blank line, body). Exits 0
    /// whenever a response was produced, 2 on a usage error.
    Request(request::RequestArgs),
    /// Serve HTTP: every request runs its scripts in a fresh sandbox.
    /// A Lua error answers 500, a limit 503; the server keeps serving.
    Serve(serve::ServeArgs),
    /// Check a server configuration, every tenant policy and every script a
    /// request could reach; list every problem. Exits 0 if there are none, 1
    /// if there are, 2 if the configuration cannot be read.
    Check(check::CheckArgs),
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // Help and version go to stdout with 0; mistakes to stderr with 2.
            let _ = error.print();
            return ExitCode::from(if error.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    let code = match cli.command {
        Command::Exec(args) => exec::run(args),
        Command::Request(args) => request::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Check(args) => check::run(args),
    };
    ExitCode::from(code)
}

/// Log to stderr: human-readable lines, or JSON objects with `json`. The
/// level is set by `MOONWALL_LOG` (`info` by default; `debug`, `warn`, ...).
pub fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("MOONWALL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second initialisation (in tests) keeps the first. JSON lines carry
    // their target (`access` for the access log) and fields at the top level.
    // Colours only for a terminal: a log file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.with_target(false).with_ansi(ansi).try_init()
    };
}
