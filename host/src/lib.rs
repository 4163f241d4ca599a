//! moonwall: a security-first host for untrusted Lua web scripts.
//!
//! Every run of a script happens in a fresh WebAssembly instance of the
//! reference C Lua 5.4 interpreter (`guest-lua/`), held to hard limits of
//! fuel, wall-clock time, memory, native stack and output. The contract
//! between host and guest is `wit/`.
//!
//! The crate in layers, from the top down; each module uses only those
//! below it (the table and its test are in `layers.rs`, the picture in
//! docs/architecture.md, "Layers"):
//! - [`cli`]: the `moonwall` command line (`exec`, `request`, `serve`,
//!   `check`), its flags and exit codes.
//! - [`http`]: the web server: listener, dispatch (tenant, route, admission,
//!   body, run, access log), requests through phases, subrequests, the
//!   script cache.
//! - [`tenants`]: policies and ceilings, admission (requests in flight and
//!   CPU slots, with a bounded queue), metrics and their endpoint, reload.
//! - [`runtime`]: the data of a run's store, assembled in one place (the
//!   sandbox's part and the capabilities'), and the [`Sandbox`] type for it.
//! - [`caps`]: the capabilities a policy grants, one module each (waiting
//!   and subrequests, shared dicts, regex, outbound TCP and HTTP, files and
//!   modules, the response and log), each with its policy section, grant,
//!   per-run state and host functions, composed by one list.
//! - [`site`]: a site as configured: host patterns, locations and phase
//!   scripts, the site config, and every request limit defined once
//!   ([`site::limits`]).
//! - [`sandbox`]: the engine and its limits ([`sandbox::engine`]), the one
//!   run lifecycle ([`sandbox::run`], generic over the store's data), CPU
//!   slots ([`sandbox::cpu`]), the core imports ([`sandbox::host_api`]), the
//!   typed result of a run ([`sandbox::outcome`]), the prepared guest
//!   ([`sandbox::snapshot`]) and tenants' init states
//!   ([`sandbox::prepared`]), host-produced bytecode ([`sandbox::bytecode`])
//!   and the cache of compiled guest code ([`sandbox::cache`]).
//! - [`bindings`]: the Rust side of `wit/`, generated, and the header block
//!   its `list<u8>`s of headers are encoded in.
//! - [`accept`]: serving a TCP listener's connections with hyper (a cap on
//!   connections, a deadline for request heads, graceful shutdown), for the
//!   server and the metrics endpoint alike.

pub mod accept;
pub mod bindings;
pub mod caps;
pub mod cli;
pub mod http;
pub mod runtime;
pub mod sandbox;
pub mod site;
pub mod tenants;

#[cfg(test)]
mod layers;

pub use runtime::{PreparedGuest, Sandbox};
pub use sandbox::{
    CapturedOutput, EngineSettings, InheritedOutput, Limit, Limits, Outcome, OutputSink, Program,
    RunReport, SandboxError,
};
