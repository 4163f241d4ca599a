//! Serving HTTP: each request runs through OpenResty-style phases in its own
//! fresh sandbox instance.
//!
//! In the order a request passes through:
//! - [`server`]: the server's face: [`server::App`] (the state requests
//!   share, [`app`]) and [`server::serve`], made of [`listener`]
//!   (connections, limits on heads, slow clients, graceful shutdown),
//!   [`dispatch`] (one request: tenant, route, admission, body (read in
//!   [`body`], bounded in size and time), run, access log) and [`response`] (the host's pages, the guest's response on its
//!   way out).
//! - [`routing`] and [`config`] (from [`crate::site`], below the server):
//!   which scripts handle a path; static files ([`static_files`]).
//! - [`request`]: the request as the guest will see it (path normalized).
//! - [`phases`]: one request through rewrite, access, content, the filters
//!   and log, in one instance; how it ended; the fallback response.
//! - the host side of the guest's HTTP imports (the response, validated and
//!   bounded, log lines, digests) is a capability like the others:
//!   [`crate::caps::http`].
//! - [`tls`]: HTTPS listeners' certificates, chosen by SNI among the
//!   tenants' own.
//! - [`subrequests`]: `ngx.location.capture`, routed inside the tenant, each
//!   in an instance of its own.

pub mod app;
pub(crate) mod body;
pub(crate) mod dispatch;
pub(crate) mod listener;
pub mod phases;
pub mod request;
pub(crate) mod response;
pub mod scripts;
pub mod server;
pub mod static_files;
pub mod subrequests;
pub mod tls;

pub use crate::bindings::moonwall::sandbox::http_types::{Handlers, Header, Request, Source};
pub use crate::caps::http::{CollectedResponse, RequestLog, ResponseSink};
/// A site's configuration and routes live below the server, in
/// [`crate::site`]; here under their old names too.
pub use crate::site::{config, routing};
pub use phases::{HttpOutcome, HttpReport};
