//! The Lua guest of moonwall, as bytes: the reference C Lua 5.4 interpreter and
//! moonwall's glue (`glue/`), built by `build.rs` into a WebAssembly component
//! whose world is `sandbox` in `wit/sandbox.wit`.
//!
//! The host compiles this component once (and caches the compiled code); every
//! run then gets a fresh instance of it.

/// The guest component.
pub const COMPONENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/moonwall-guest.wasm"));

/// A hash of [`COMPONENT`], computed at build time: part of the key under
/// which the host caches compiled code.
pub const COMPONENT_HASH: &str = env!("MOONWALL_GUEST_HASH");
