//! moonwall: a security-first host for untrusted Lua web scripts.
//!
//! Every run of a script happens in a fresh WebAssembly instance of the
//! reference C Lua 5.4 interpreter (`guest-lua/`), held to hard limits of
//! fuel, wall-clock time, memory, native stack and output. The contract
//! between host and guest is `wit/`.
//!
//! The crate, in the order a run passes through it:
//! - [`cli`]: the `moonwall` command line (`moonwall exec`), its flags and
//!   exit codes.
//! - [`http`]: the web server: routing, requests through phases, the
//!   response and log imports of the guest.
//! - [`tenants`]: host matching, policies and ceilings, admission (requests
//!   in flight and CPU slots, with a bounded queue), metrics, reload.
//! - [`caps`]: the capabilities a policy grants, one module each (shared
//!   dicts, outbound TCP and HTTP, files and modules, regex, waiting).
//! - [`sandbox`]: the engine and its limits ([`sandbox::engine`]), the one
//!   run lifecycle (`sandbox::run`), CPU slots ([`sandbox::cpu`]), the host
//!   side of the WIT contract ([`sandbox::host_api`]), the typed result of a
//!   run ([`sandbox::outcome`]), the prepared guest ([`sandbox::snapshot`])
//!   and tenants' init states ([`sandbox::prepared`]), host-produced
//!   bytecode ([`sandbox::bytecode`]) and the cache of compiled guest code
//!   ([`sandbox::cache`]).
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
