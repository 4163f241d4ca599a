//! Serving HTTP: each request runs through OpenResty-style phases in its own
//! fresh sandbox instance.
//!
//! In the order a request passes through:
//! - [`server`]: the server's face: [`server::App`] (the state requests
//!   share, [`app`]) and [`server::serve`], made of [`listener`]
//!   (connections, limits on heads, slow clients, graceful shutdown),
//!   [`dispatch`] (one request: tenant, route, admission, body, run, access
//!   log) and [`response`] (the host's pages, the guest's response on its
//!   way out).
//! - [`routing`]: which scripts handle a path, in a CGI-style document root
//!   or in configured locations ([`config`]); static files ([`static_files`]).
//! - [`request`]: the request as the guest will see it (path normalized).
//! - [`phases`]: one request through rewrite, access, content, the filters
//!   and log, in one instance; how it ended; the fallback response.
//! - [`guest_api`]: the host side of the guest's HTTP imports: the response
//!   (validated and bounded), log lines, digests.
//! - [`subrequests`]: `ngx.location.capture`, routed inside the tenant, each
//!   in an instance of its own.

pub mod app;
pub mod config;
pub(crate) mod dispatch;
pub mod guest_api;
pub(crate) mod listener;
pub mod phases;
pub mod request;
pub(crate) mod response;
pub mod routing;
pub mod scripts;
pub mod server;
pub mod static_files;
pub mod subrequests;

pub use crate::sandbox::host_api::moonwall::sandbox::http_types::{
    Handlers, Header, Request, Source,
};
pub use guest_api::{CollectedResponse, RequestLog, ResponseSink};
pub use phases::{HttpOutcome, HttpReport};
