//! `ngx.shared.DICT`: each tenant's shared dictionaries.
//!
//! A tenant's policy declares its dicts and their sizes
//! (`[capabilities] shared_dicts = { cache = "10m" }`); a script opens one by
//! name (`ngx.shared.cache`) and gets a handle valid for its run. Nothing
//! else is reachable: a tenant's [`Grant`] holds only its own dicts.
//!
//! The semantics are OpenResty's (lua-nginx-module's shdict), on one of two
//! backends behind the [`Store`] trait:
//! - [`memory`]: this process's memory (the default), one lock per dict;
//! - [`redis`]: a Redis server shared by several moonwall nodes, each
//!   operation one atomic Lua script there.
//!
//! Sizes are accounted the same way on both: an entry costs its key, its
//! value ([`value_size`]; a list, each element plus [`LIST_ITEM_OVERHEAD`])
//! and [`ENTRY_OVERHEAD`]. A dict never holds more than its declared size:
//! a store that does not fit removes expired entries first, then (`set`,
//! `add`, `replace`, `incr`) the least recently used ones; `safe_*` and list
//! pushes never evict live entries; a value larger than the whole dict is
//! refused.

pub mod memory;
pub mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use wasmtime::component::{HasSelf, Linker};

use super::RunCaps;
use crate::bindings::moonwall::sandbox::shared_dict as wit;

/// What every entry costs beyond its key and value: the host's bookkeeping
/// of it (its node, its place in the key index, the LRU and write orders
/// and the expiry index, allocation headers).
pub const ENTRY_OVERHEAD: u64 = 192;
/// What every element of a list costs beyond its bytes.
pub const LIST_ITEM_OVERHEAD: u64 = 48;
/// The longest key, as OpenResty's.
pub const MAX_KEY_LEN: usize = 65535;
/// The longest time to live (about 34 years); longer ones are cut to it.
pub const MAX_TTL_MS: u64 = 1 << 40;

/// A stored value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(Bytes),
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// What `get` finds.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub value: Value,
    pub flags: u32,
    /// The entry has expired (only a stale read returns it).
    pub stale: bool,
}

/// How a store treats an existing entry (OpenResty's `set`, `safe_set`,
/// `add`, `safe_add`, `replace`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Set,
    SafeSet,
    Add,
    SafeAdd,
    Replace,
}

impl Mode {
    /// Whether a store in this mode may evict live entries to make room.
    pub fn evicts(self) -> bool {
        matches!(self, Mode::Set | Mode::Add | Mode::Replace)
    }
}

/// Why an operation did not happen.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// OpenResty's answer for an operation that cannot be done
    /// ([`EXISTS`], [`NOT_FOUND`], [`NO_MEMORY`], ...).
    Refused(&'static str),
    /// The backend failed (Redis unreachable, timed out, ...).
    Backend(String),
    /// The run's deadline passed while waiting for the backend.
    Deadline,
    /// A scan over many entries would visit more than its budget
    /// ([`Scanned`]): the run's fuel runs out.
    Fuel,
}

/// Fuel per entry a scan visits (`get_keys`, `flush_expired`) or a write
/// removes to make room (expired or evicted): about what the host spends on
/// one (a few tens of nanoseconds, at the guest's ~10 fuel a nanosecond).
pub const SCAN_FUEL_PER_ENTRY: u64 = 256;
/// Entries a memory dict's scan visits (or a write removes for room) per
/// hold of the dict's lock, and a Redis dict's per round trip: between two
/// batches, other runs use the dict, and the run's deadline is checked.
pub const SCAN_BATCH: usize = 1024;

/// What a scan over many entries returned, and how many it visited (what
/// it costs: [`SCAN_FUEL_PER_ENTRY`] each).
#[derive(Debug, Clone, PartialEq)]
pub struct Scanned<T> {
    pub value: T,
    pub visited: u64,
}

/// What a write (`store`, `incr`, `push`) answered, and how many entries it
/// removed to make room (expired and evicted alike), whatever the answer:
/// each costs [`SCAN_FUEL_PER_ENTRY`]. A write that must remove more than
/// [`SCAN_BATCH`] removes them a batch at a time (per hold of a memory
/// dict's lock, per Redis call), checking the run's deadline in between;
/// it visits at most its budget ([`Error::Fuel`] past it).
#[derive(Debug, Clone, PartialEq)]
pub struct Written<T> {
    pub answer: Result<T, Error>,
    pub removed: u64,
}

impl<T> Written<T> {
    /// An answer that removed nothing.
    pub fn only(answer: Result<T, Error>) -> Written<T> {
        Written { answer, removed: 0 }
    }
}

pub const EXISTS: &str = "exists";
pub const NOT_FOUND: &str = "not found";
pub const NO_MEMORY: &str = "no memory";
pub const NOT_A_NUMBER: &str = "not a number";
pub const NOT_A_LIST: &str = "value not a list";
pub const IS_A_LIST: &str = "value is a list";
pub const NIL_ADD: &str = "attempt to add or replace nil values";
pub const INTEGER_OVERFLOW: &str = "integer overflow";
pub const BAD_VALUE: &str = "bad value type";
pub const EMPTY_KEY: &str = "empty key";
pub const LONG_KEY: &str = "key too long";

/// The answer of a backend's operation.
pub type DictFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'a>>;

/// The answer of a backend's write, with what it removed for room.
pub type WriteFuture<'a, T> = Pin<Box<dyn Future<Output = Written<T>> + Send + 'a>>;

/// One dict on its backend. Every method is one atomic operation (but the
/// scans, `get_keys` and `flush_expired`, and the removals a write makes
/// for room, done in batches); a
/// backend that waits (Redis) gives up at `deadline` with
/// [`Error::Deadline`]. Keys are checked ([`check_key`]) and times cut to
/// [`MAX_TTL_MS`] before they get here.
pub trait Store: Send + Sync {
    /// The declared size minus what the entries cost.
    fn free_space(&self, deadline: Instant) -> DictFuture<'_, u64>;
    /// The entry of `key`: none if absent, or expired unless `stale`. Fails
    /// with [`IS_A_LIST`] on a list.
    fn get(&self, key: Vec<u8>, stale: bool, deadline: Instant) -> DictFuture<'_, Option<Item>>;
    /// Store `value` (none: delete) under `key`, expiring after `ttl_ms`
    /// (0: never); whether live entries were evicted for room. Removes at
    /// most `budget` entries for room ([`Written`]).
    #[allow(clippy::too_many_arguments)]
    fn store(
        &self,
        key: Vec<u8>,
        value: Option<Value>,
        ttl_ms: u64,
        flags: u32,
        mode: Mode,
        deadline: Instant,
        budget: u64,
    ) -> WriteFuture<'_, bool>;
    /// Add the number `delta` to the number under `key`, or start a missing
    /// key at `init + delta` (flags 0, expiring after `init_ttl_ms`); the new
    /// value and whether live entries were evicted for it. Removes at most
    /// `budget` entries for room ([`Written`]).
    fn incr(
        &self,
        key: Vec<u8>,
        delta: Value,
        init: Option<Value>,
        init_ttl_ms: u64,
        deadline: Instant,
        budget: u64,
    ) -> WriteFuture<'_, (Value, bool)>;
    /// Milliseconds before `key` expires (0: never).
    fn ttl(&self, key: Vec<u8>, deadline: Instant) -> DictFuture<'_, u64>;
    /// Make the live entry `key` expire after `ttl_ms` (0: never).
    fn expire(&self, key: Vec<u8>, ttl_ms: u64, deadline: Instant) -> DictFuture<'_, ()>;
    /// Mark every entry expired (`get_stale` still sees them).
    fn flush_all(&self, deadline: Instant) -> DictFuture<'_, ()>;
    /// Remove up to `max` (0: all) expired entries; how many went.
    /// Visits at most `budget` entries, in batches of [`SCAN_BATCH`]
    /// ([`Error::Fuel`] past it).
    fn flush_expired(
        &self,
        max: u32,
        deadline: Instant,
        budget: u64,
    ) -> DictFuture<'_, Scanned<u32>>;
    /// Up to `max` (0: all) live keys, least recently used first.
    /// Visits at most `budget` entries, in batches of [`SCAN_BATCH`]
    /// ([`Error::Fuel`] past it).
    fn get_keys(
        &self,
        max: u32,
        deadline: Instant,
        budget: u64,
    ) -> DictFuture<'_, Scanned<Vec<Vec<u8>>>>;
    /// Push a string or number onto the list `key` (created if absent);
    /// its new length. Removes at most `budget` expired entries for room
    /// ([`Written`]).
    fn push(
        &self,
        key: Vec<u8>,
        value: Value,
        front: bool,
        deadline: Instant,
        budget: u64,
    ) -> WriteFuture<'_, u64>;
    /// Take an element off the list `key`; none if there is no list.
    fn pop(&self, key: Vec<u8>, front: bool, deadline: Instant) -> DictFuture<'_, Option<Value>>;
    /// The length of the list `key` (0 if absent).
    fn llen(&self, key: Vec<u8>, deadline: Instant) -> DictFuture<'_, u64>;
}

/// What a value costs, its key and overhead aside.
pub fn value_size(value: &Value) -> u64 {
    match value {
        Value::Str(bytes) => bytes.len() as u64,
        Value::Int(_) | Value::Float(_) => 8,
        Value::Bool(_) => 1,
    }
}

/// What an entry of `key_len` bytes of key and `value_size` bytes of value
/// costs.
pub fn entry_cost(key_len: usize, value_size: u64) -> u64 {
    key_len as u64 + value_size + ENTRY_OVERHEAD
}

/// What one element of a list costs.
pub fn item_cost(value: &Value) -> u64 {
    value_size(value) + LIST_ITEM_OVERHEAD
}

/// A key must be 1 to [`MAX_KEY_LEN`] bytes.
pub fn check_key(key: &[u8]) -> Result<(), Error> {
    if key.is_empty() {
        Err(Error::Refused(EMPTY_KEY))
    } else if key.len() > MAX_KEY_LEN {
        Err(Error::Refused(LONG_KEY))
    } else {
        Ok(())
    }
}

/// `a + b` as Lua 5.4 adds numbers, except that integer overflow is an
/// error rather than a wrap-around.
pub fn add_numbers(a: &Value, b: &Value) -> Result<Value, Error> {
    Ok(match (a, b) {
        (Value::Int(x), Value::Int(y)) => {
            Value::Int(x.checked_add(*y).ok_or(Error::Refused(INTEGER_OVERFLOW))?)
        }
        (Value::Int(x), Value::Float(y)) => Value::Float(*x as f64 + y),
        (Value::Float(x), Value::Int(y)) => Value::Float(x + *y as f64),
        (Value::Float(x), Value::Float(y)) => Value::Float(x + y),
        _ => return Err(Error::Refused(NOT_A_NUMBER)),
    })
}

/// Where dicts live: this process's memory, or a Redis server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum BackendConfig {
    #[default]
    Memory,
    /// One client (and pool of connections) for the whole server.
    Redis(redis::Backend),
}

impl BackendConfig {
    /// The value of `shared_dicts_backend` in the server config:
    /// `"memory"` or `"redis://[user:password@]host[:port][/db][?timeout_ms=N]"`.
    pub fn parse(text: &str) -> Result<BackendConfig, String> {
        if text == "memory" {
            Ok(BackendConfig::Memory)
        } else if text.starts_with("redis://") {
            redis::Backend::parse(text).map(BackendConfig::Redis)
        } else {
            Err(format!(
                "shared_dicts_backend: `{}` is not a backend: use \"memory\" or \"redis://host:port/db\"",
                text.escape_debug()
            ))
        }
    }
}

/// One granted dict.
struct Dict {
    name: String,
    capacity: u64,
    backend: BackendConfig,
    store: Arc<dyn Store>,
}

/// A tenant's dicts.
#[derive(Default)]
pub struct Grant {
    tenant: String,
    dicts: Vec<Dict>,
}

impl Grant {
    /// The dicts `capabilities` declares, on `backend`. A dict of
    /// `previous` (the same tenant before a reload) with the same name, size
    /// and backend is kept, contents and all.
    pub fn from_policy(
        tenant: &str,
        config: &Config,
        previous: Option<&Grant>,
        backend: &BackendConfig,
    ) -> Result<Grant, String> {
        let previous = previous.filter(|p| p.tenant == tenant);
        let dicts = config
            .shared_dicts
            .iter()
            .map(|(name, capacity)| {
                let kept = previous.and_then(|p| {
                    p.dicts.iter().find(|d| {
                        d.name == *name && d.capacity == *capacity && d.backend == *backend
                    })
                });
                let store: Arc<dyn Store> = match (kept, backend) {
                    (Some(dict), _) => dict.store.clone(),
                    (None, BackendConfig::Memory) => Arc::new(memory::MemoryDict::new(*capacity)),
                    (None, BackendConfig::Redis(redis)) => {
                        Arc::new(redis.dict(tenant, name, *capacity))
                    }
                };
                Dict {
                    name: name.clone(),
                    capacity: *capacity,
                    backend: backend.clone(),
                    store,
                }
            })
            .collect();
        Ok(Grant {
            tenant: tenant.to_string(),
            dicts,
        })
    }

    /// The handle of the dict `name`, or the error that says which dicts
    /// the policy grants.
    fn open(&self, name: &[u8]) -> Result<u32, String> {
        if let Some(index) = self.dicts.iter().position(|d| d.name.as_bytes() == name) {
            return Ok(index as u32);
        }
        let shown: String = String::from_utf8_lossy(&name[..name.len().min(64)])
            .escape_debug()
            .collect();
        let ellipsis = if name.len() > 64 { "..." } else { "" };
        let granted = if self.dicts.is_empty() {
            "the policy grants none".to_string()
        } else {
            let names: Vec<&str> = self.dicts.iter().map(|d| d.name.as_str()).collect();
            format!("the policy grants: {}", names.join(", "))
        };
        Err(format!(
            "ngx.shared: no shared dict \"{shown}{ellipsis}\" ({granted}; see [capabilities] shared_dicts)"
        ))
    }

    fn dict(&self, handle: u32) -> Result<&Dict, Error> {
        self.dicts
            .get(handle as usize)
            .ok_or(Error::Refused("no such shared dict handle"))
    }
}

/// Per-run state: none (a handle is an index into the run's grant).
#[derive(Default)]
pub struct State {}

impl From<wit::Value> for Value {
    fn from(value: wit::Value) -> Value {
        match value {
            wit::Value::Str(bytes) => Value::Str(Bytes::from(bytes)),
            wit::Value::Int(n) => Value::Int(n),
            wit::Value::Float(x) => Value::Float(x),
            wit::Value::Boolean(b) => Value::Bool(b),
        }
    }
}

impl From<Value> for wit::Value {
    fn from(value: Value) -> wit::Value {
        match value {
            Value::Str(bytes) => wit::Value::Str(Vec::from(bytes)),
            Value::Int(n) => wit::Value::Int(n),
            Value::Float(x) => wit::Value::Float(x),
            Value::Bool(b) => wit::Value::Boolean(b),
        }
    }
}

impl From<wit::StoreMode> for Mode {
    fn from(mode: wit::StoreMode) -> Mode {
        match mode {
            wit::StoreMode::Set => Mode::Set,
            wit::StoreMode::SafeSet => Mode::SafeSet,
            wit::StoreMode::Add => Mode::Add,
            wit::StoreMode::SafeAdd => Mode::SafeAdd,
            wit::StoreMode::Replace => Mode::Replace,
        }
    }
}

fn is_number(value: &Value) -> bool {
    matches!(value, Value::Int(_) | Value::Float(_))
}

impl RunCaps {
    fn dict_store(&self, handle: u32) -> Result<Arc<dyn Store>, Error> {
        Ok(self.grants.dict.dict(handle)?.store.clone())
    }

    /// The guest's answer: refusals and backend failures are Lua errors; a
    /// deadline that passed stops the run.
    fn dict_answer<T>(&self, result: Result<T, Error>) -> wasmtime::Result<Result<T, String>> {
        match result {
            Ok(value) => Ok(Ok(value)),
            Err(Error::Refused(message)) => Ok(Err(message.to_string())),
            Err(Error::Backend(message)) => Ok(Err(format!("shared dict backend: {message}"))),
            Err(Error::Deadline) => Err(self.deadline_passed()),
            Err(Error::Fuel) => Err(wasmtime::Error::new(wasmtime::Trap::OutOfFuel)),
        }
    }

    /// How many entries a scan may visit, or a write remove for room, on
    /// the run's fuel.
    fn scan_budget(&self) -> u64 {
        self.work.remaining() / SCAN_FUEL_PER_ENTRY
    }

    /// Charge a scan for the entries it visited.
    fn charge_scan<T>(&mut self, result: Result<Scanned<T>, Error>) -> Result<T, Error> {
        let scanned = result?;
        let fuel = scanned.visited.saturating_mul(SCAN_FUEL_PER_ENTRY);
        self.work.charge(fuel).map_err(|_| Error::Fuel)?;
        Ok(scanned.value)
    }

    /// Charge a write for the entries it removed to make room, whatever it
    /// answered (a refused write may have removed some first).
    fn charge_removals<T>(&mut self, written: Written<T>) -> Result<T, Error> {
        let fuel = written.removed.saturating_mul(SCAN_FUEL_PER_ENTRY);
        self.work.charge(fuel).map_err(|_| Error::Fuel)?;
        written.answer
    }
}

impl wit::Host for RunCaps {
    async fn open(&mut self, name: Vec<u8>) -> wasmtime::Result<Result<u32, String>> {
        Ok(self.grants.dict.open(&name))
    }

    async fn capacity(&mut self, dict: u32) -> wasmtime::Result<Result<u64, String>> {
        let result = self.grants.dict.dict(dict).map(|d| d.capacity);
        self.dict_answer(result)
    }

    async fn free_space(&mut self, dict: u32) -> wasmtime::Result<Result<u64, String>> {
        let result = match self.dict_store(dict) {
            Ok(store) => self.off_cpu(store.free_space(self.deadline)).await?,
            Err(error) => Err(error),
        };
        self.dict_answer(result)
    }

    async fn get(
        &mut self,
        dict: u32,
        key: Vec<u8>,
        stale: bool,
    ) -> wasmtime::Result<Result<Option<wit::Item>, String>> {
        let (store, deadline) = (self.dict_store(dict), self.deadline);
        let result = self
            .off_cpu(async move {
                let store = store?;
                check_key(&key)?;
                store.get(key, stale, deadline).await
            })
            .await?;
        self.dict_answer(result.map(|found| {
            found.map(|item| wit::Item {
                value: item.value.into(),
                flags: item.flags,
                stale: item.stale,
            })
        }))
    }

    async fn store(
        &mut self,
        dict: u32,
        key: Vec<u8>,
        value: Option<wit::Value>,
        ttl_ms: u64,
        flags: u32,
        mode: wit::StoreMode,
    ) -> wasmtime::Result<Result<bool, String>> {
        let (store, deadline) = (self.dict_store(dict), self.deadline);
        let budget = self.scan_budget();
        let written = self
            .off_cpu(async move {
                let store = match store.and_then(|store| check_key(&key).map(|()| store)) {
                    Ok(store) => store,
                    Err(error) => return Written::only(Err(error)),
                };
                let value = value.map(Value::from);
                store
                    .store(
                        key,
                        value,
                        ttl_ms.min(MAX_TTL_MS),
                        flags,
                        mode.into(),
                        deadline,
                        budget,
                    )
                    .await
            })
            .await?;
        let result = self.charge_removals(written);
        self.dict_answer(result)
    }

    async fn incr(
        &mut self,
        dict: u32,
        key: Vec<u8>,
        delta: wit::Value,
        init: Option<wit::Value>,
        init_ttl_ms: u64,
    ) -> wasmtime::Result<Result<(wit::Value, bool), String>> {
        let (store, deadline) = (self.dict_store(dict), self.deadline);
        let budget = self.scan_budget();
        let written = self
            .off_cpu(async move {
                let store = match store.and_then(|store| check_key(&key).map(|()| store)) {
                    Ok(store) => store,
                    Err(error) => return Written::only(Err(error)),
                };
                let delta = Value::from(delta);
                let init = init.map(Value::from);
                if !is_number(&delta) || init.as_ref().is_some_and(|init| !is_number(init)) {
                    return Written::only(Err(Error::Refused(BAD_VALUE)));
                }
                store
                    .incr(
                        key,
                        delta,
                        init,
                        init_ttl_ms.min(MAX_TTL_MS),
                        deadline,
                        budget,
                    )
                    .await
            })
            .await?;
        let result = self.charge_removals(written);
        self.dict_answer(result.map(|(value, forcible)| (value.into(), forcible)))
    }

    async fn ttl(&mut self, dict: u32, key: Vec<u8>) -> wasmtime::Result<Result<u64, String>> {
        let (store, deadline) = (self.dict_store(dict), self.deadline);
        let result = self
            .off_cpu(async move {
                let store = store?;
                check_key(&key)?;
                store.ttl(key, deadline).await
            })
            .await?;
        self.dict_answer(result)
    }

    async fn expire(
        &mut self,
        dict: u32,
        key: Vec<u8>,
        ttl_ms: u64,
    ) -> wasmtime::Result<Result<(), String>> {
        let (store, deadline) = (self.dict_store(dict), self.deadline);
        let result = self
            .off_cpu(async move {
                let store = store?;
                check_key(&key)?;
                store.expire(key, ttl_ms.min(MAX_TTL_MS), deadline).await
            })
            .await?;
        self.dict_answer(result)
    }

    async fn flush_all(&mut self, dict: u32) -> wasmtime::Result<Result<(), String>> {
        let result = match self.dict_store(dict) {
            Ok(store) => self.off_cpu(store.flush_all(self.deadline)).await?,
            Err(error) => Err(error),
        };
        self.dict_answer(result)
    }

    async fn flush_expired(
        &mut self,
        dict: u32,
        max: u32,
    ) -> wasmtime::Result<Result<u32, String>> {
        let budget = self.scan_budget();
        let result = match self.dict_store(dict) {
            Ok(store) => {
                let scanned = self
                    .off_cpu(store.flush_expired(max, self.deadline, budget))
                    .await?;
                self.charge_scan(scanned)
            }
            Err(error) => Err(error),
        };
        self.dict_answer(result)
    }

    async fn get_keys(
        &mut self,
        dict: u32,
        max: u32,
    ) -> wasmtime::Result<Result<Vec<Vec<u8>>, String>> {
        let budget = self.scan_budget();
        let result = match self.dict_store(dict) {
            Ok(store) => {
                let scanned = self
                    .off_cpu(store.get_keys(max, self.deadline, budget))
                    .await?;
                self.charge_scan(scanned)
            }
            Err(error) => Err(error),
        };
        self.dict_answer(result)
    }

    async fn push(
        &mut self,
        dict: u32,
        key: Vec<u8>,
        value: wit::Value,
        front: bool,
    ) -> wasmtime::Result<Result<u64, String>> {
        let (store, deadline) = (self.dict_store(dict), self.deadline);
        let budget = self.scan_budget();
        let written = self
            .off_cpu(async move {
                let store = match store.and_then(|store| check_key(&key).map(|()| store)) {
                    Ok(store) => store,
                    Err(error) => return Written::only(Err(error)),
                };
                let value = Value::from(value);
                if matches!(value, Value::Bool(_)) {
                    return Written::only(Err(Error::Refused(BAD_VALUE)));
                }
                store.push(key, value, front, deadline, budget).await
            })
            .await?;
        let result = self.charge_removals(written);
        self.dict_answer(result)
    }

    async fn pop(
        &mut self,
        dict: u32,
        key: Vec<u8>,
        front: bool,
    ) -> wasmtime::Result<Result<Option<wit::Value>, String>> {
        let (store, deadline) = (self.dict_store(dict), self.deadline);
        let result = self
            .off_cpu(async move {
                let store = store?;
                check_key(&key)?;
                store.pop(key, front, deadline).await
            })
            .await?;
        self.dict_answer(result.map(|found| found.map(Into::into)))
    }

    async fn llen(&mut self, dict: u32, key: Vec<u8>) -> wasmtime::Result<Result<u64, String>> {
        let (store, deadline) = (self.dict_store(dict), self.deadline);
        let result = self
            .off_cpu(async move {
                let store = store?;
                check_key(&key)?;
                store.llen(key, deadline).await
            })
            .await?;
        self.dict_answer(result)
    }
}

/// The dict capability's keys of a policy's `[capabilities]`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Section {
    /// `{ NAME = "SIZE", ... }`: the tenant's dicts and their sizes.
    shared_dicts: Option<std::collections::BTreeMap<String, toml::Spanned<String>>>,
}

/// What a policy's dict section checked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    /// Shared dicts by name, with their size in bytes.
    pub shared_dicts: Vec<(String, u64)>,
}

impl super::policy::PolicySection for Section {
    type Config = Config;

    fn apply(self, cx: &mut super::policy::PolicyContext) -> Config {
        let mut config = Config::default();
        for (name, size) in self.shared_dicts.iter().flatten() {
            if !crate::site::config::valid_name(name, b"-") {
                cx.problems.at(
                    size.span(),
                    format!("shared dict name `{name}`: use letters, digits, '_' and '-'"),
                );
                continue;
            }
            match parse_size(size.get_ref()) {
                Some(bytes) if (1..=MAX_DICT_BYTES).contains(&bytes) => {
                    config.shared_dicts.push((name.clone(), bytes))
                }
                _ => cx.problems.at(
                    size.span(),
                    format!(
                        "shared dict `{name}`: `{}` is not a size between 1 and 1g (like \"10m\")",
                        size.get_ref()
                    ),
                ),
            }
        }
        config
    }
}

/// Parse a size like nginx's: `512k`, `10m`, `1g`, or bytes.
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim().to_ascii_lowercase();
    let (digits, unit) = match text.strip_suffix(['k', 'm', 'g']) {
        Some(digits) => (digits, text.as_bytes()[text.len() - 1]),
        None => (text.as_str(), b'b'),
    };
    let number: u64 = digits.parse().ok()?;
    let shift = match unit {
        b'k' => 10,
        b'm' => 20,
        b'g' => 30,
        _ => 0,
    };
    number.checked_mul(1 << shift)
}

/// The largest shared dict one tenant may declare.
const MAX_DICT_BYTES: u64 = 1 << 30;

/// The capability: the tenant's shared dicts.
pub struct Dicts;

impl super::Capability for Dicts {
    type Section = Section;
    type Config = Config;
    type Grant = Grant;
    type State = State;

    fn grant(
        tenant: &str,
        config: &Config,
        previous: Option<&Grant>,
        settings: &super::CapsSettings,
    ) -> Result<Grant, String> {
        Grant::from_policy(tenant, config, previous, &settings.dict_backend)
    }

    fn add_to_linker<T: Send + 'static>(
        linker: &mut Linker<T>,
        get: super::Project<T>,
    ) -> wasmtime::Result<()> {
        wit::add_to_linker::<T, HasSelf<RunCaps>>(linker, get)
    }
}

#[cfg(test)]
mod section_tests {
    use super::*;

    #[test]
    fn sizes_parse_like_nginx() {
        assert_eq!(parse_size("10m"), Some(10 << 20));
        assert_eq!(parse_size("512k"), Some(512 << 10));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("m"), None);
        assert_eq!(parse_size("-1k"), None);
        assert_eq!(parse_size("99999999999999999g"), None);
    }
}
