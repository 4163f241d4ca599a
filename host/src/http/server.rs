//! The HTTP server: hyper on tokio, HTTP/1.1 with keep-alive and HTTP/2
//! (h2c, by prior knowledge), each script request in a fresh sandbox instance.
//!
//! In three pieces, one concern each:
//! - [`super::listener`]: connections (a semaphore, waiting before accept),
//!   header bytes and count, the time to read a request's headers (slow
//!   clients: slowloris), the graceful shutdown, which drains in-flight
//!   requests (the accept loop itself is [`crate::accept`]'s, which the
//!   metrics endpoint uses too);
//! - [`super::dispatch`]: one request: its tenant, route, admission (requests
//!   in flight and runs on a CPU, see `tenants::admission`), the request
//!   body (413), the run, the access log;
//! - [`super::response`]: the host's own pages and the guest's response on
//!   its way to the connection.
//!
//! The state they share is [`App`], with the server's own bounds in
//! [`ServerSettings`].

pub use super::app::{App, ServerSettings, default_max_running};
pub use super::listener::serve;
