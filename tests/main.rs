//! moonwall's integration tests: one binary, a module per area (each file
//! of this directory), sharing `common`. Run one area with
//! `cargo test --test integration AREA::` (for example `caps_dict::`).

mod common;

mod bytecode;
mod caps_dict;
mod caps_files;
mod caps_json;
mod caps_regex;
mod caps_tasks;
mod caps_tcp;
mod caps_tls;
mod cli;
mod example_api;
mod example_gateway;
mod host_work;
mod hostile;
mod http_server;
mod openresty;
mod policies;
mod proxy;
mod sandbox_api;
mod tenants;
mod tls_in;
