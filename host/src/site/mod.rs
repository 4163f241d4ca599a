//! A site as configured: its host names ([`hosts`]), its locations and the
//! scripts of each phase ([`routing`]), and the config file that declares
//! them ([`config`]); the certificates of its HTTPS listeners ([`tls`]); the upstreams its
//! proxied locations pass requests to ([`upstreams`]); every limit a request is held to, defined once
//! ([`limits`]). Below the tenants and the server, which both read
//! sites; it knows only the sandbox's limits and the WIT types.

pub mod config;
pub mod hosts;
pub mod limits;
pub mod routing;
pub mod tls;
pub mod upstreams;
