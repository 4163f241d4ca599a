//! Shared dicts on a Redis server, for several moonwall nodes sharing state
//! (`shared_dicts_backend = "redis://host:port/db"` in the server config).
//!
//! Every operation is one Lua script run atomically by Redis ([`SCRIPT`],
//! by `EVALSHA`), so the accounting of sizes, expiry, LRU eviction, `incr`
//! and lists keep OpenResty's semantics across nodes. Time is Redis's own
//! (`TIME`), so nodes agree on expiry. What visits many entries is done in
//! batches, a script call each, so that Redis serves others in between:
//! `get_keys` and `flush_expired` ([`super::SCAN_BATCH`] entries per call)
//! and a write's evictions (the script evicts a batch and answers "again").
//!
//! The client is a small RESP2 client of our own over tokio TCP rather than
//! the `redis` crate: it needs five commands, and owning the parser lets
//! every reply be bounded before anything is allocated for it (a value is
//! at most the dict's size; a list of keys at most what the dict can hold).
//! Connections are pooled (at most [`client::MAX_CONNECTIONS`] at once, at
//! most [`client::TENANT_CONNECTIONS`] for one tenant's calls);
//! every call is bounded by the backend's timeout and by the run's deadline,
//! and a connection whose call did not end cleanly is dropped.
//!
//! Layout of a dict in Redis, under the prefix `moonwall:{TENANT/DICT}:`
//! (the hash tag keeps a dict in one cluster slot):
//! `t` hash key -> "type:flags:cost"; `d` hash key -> the value's bytes;
//! `e` sorted set of expiry times (ms); `u` sorted set of last uses (LRU);
//! `w` sorted set of write sequence numbers (entries written before the
//! `flush` mark of `m` are flushed); `m` hash of `used`, `clock`, `seq`,
//! `flush`; `l` + key: the list of a list entry (each element its type
//! letter and bytes).
//!
//! The files:
//! - [`config`]: where the server is ([`config::RedisConfig`], from the
//!   `redis://` URL);
//! - [`client`]: the server's client ([`Backend`]): the connection pool and
//!   the RESP2 protocol;
//! - [`store`]: one dict on the server ([`store::RedisDict`]), each
//!   operation a call of the script, and values as the script stores them;
//! - `script.lua`: the script ([`SCRIPT`]).

pub mod client;
pub mod config;
pub mod store;

pub use self::client::Backend;

/// The one script behind every operation (`script.lua`). KEYS[1] is the
/// dict's prefix; ARGV: the operation, the dict's size,
/// [`ENTRY_OVERHEAD`](super::ENTRY_OVERHEAD),
/// [`LIST_ITEM_OVERHEAD`](super::LIST_ITEM_OVERHEAD), then the operation's
/// arguments. It answers `{0, ...}`, or `{1, message}` for OpenResty's
/// refusals.
// The leading newline is part of the script's bytes, which decide its SHA1
// (`EVALSHA`) and the line numbers in Redis's error messages.
pub const SCRIPT: &str = concat!("\n", include_str!("script.lua"));
