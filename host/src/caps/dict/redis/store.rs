//! One dict on the Redis server ([`RedisDict`]): each [`Store`] operation
//! a call of the script, its arguments and answer encoded as the script
//! takes and gives them.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::client::{Budget, Client, REPLY_SLACK, Reply, protocol};
use crate::caps::dict::{
    DictFuture, ENTRY_OVERHEAD, EXISTS, Error, INTEGER_OVERFLOW, IS_A_LIST, Item,
    LIST_ITEM_OVERHEAD, Mode, NIL_ADD, NO_MEMORY, NOT_A_LIST, NOT_A_NUMBER, NOT_FOUND, SCAN_BATCH,
    Scanned, Store, Value, WriteFuture, Written, add_numbers,
};

/// One dict on the Redis server.
pub struct RedisDict {
    pub(super) client: Arc<Client>,
    pub(super) prefix: Vec<u8>,
    pub(super) capacity: u64,
    /// Its tenant's share of the client's connections.
    pub(super) share: Arc<tokio::sync::Semaphore>,
}

/// A refusal of the script: the message back as one of ours.
fn refusal(message: &[u8]) -> Error {
    const KNOWN: &[&str] = &[
        EXISTS,
        NOT_FOUND,
        NO_MEMORY,
        NOT_A_NUMBER,
        NOT_A_LIST,
        IS_A_LIST,
        INTEGER_OVERFLOW,
    ];
    match KNOWN.iter().find(|known| known.as_bytes() == message) {
        Some(known) => Error::Refused(known),
        None => protocol(format!(
            "unknown refusal {:?}",
            String::from_utf8_lossy(&message[..message.len().min(100)])
        )),
    }
}

/// A value as the script stores it: its type letter and bytes.
fn encode(value: &Value) -> (&'static [u8], Vec<u8>) {
    match value {
        Value::Str(bytes) => (b"s", bytes.to_vec()),
        Value::Int(n) => (b"i", n.to_string().into_bytes()),
        Value::Float(x) => (b"f", format!("{x:?}").into_bytes()),
        Value::Bool(b) => (b"b", if *b { b"1".to_vec() } else { b"0".to_vec() }),
    }
}

/// A float as Lua's `%.17g` or Rust's `{:?}` wrote it.
fn parse_float(text: &str) -> Option<f64> {
    match text
        .trim_start_matches(['-', '+'])
        .to_ascii_lowercase()
        .as_str()
    {
        "nan" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

fn decode(kind: &[u8], data: Vec<u8>) -> Result<Value, Error> {
    let text = || std::str::from_utf8(&data).map_err(|_| protocol("a number that is not text"));
    match kind {
        b"s" => Ok(Value::Str(Bytes::from(data))),
        b"i" => text()?
            .parse()
            .map(Value::Int)
            .map_err(|_| protocol("a bad integer")),
        b"f" => parse_float(text()?)
            .map(Value::Float)
            .ok_or_else(|| protocol("a bad float")),
        b"b" => Ok(Value::Bool(data == b"1")),
        _ => Err(protocol("an unknown value type")),
    }
}

/// The script's answer `{2, evicted}` when a write had to remove more than
/// [`SCAN_BATCH`] entries for room: it removed that many (`evicted`: 1 if
/// live ones were among them) and changed nothing else; the call is made
/// again.
const AGAIN: i64 = 2;

/// What one call of the script answered.
enum Answer {
    /// `{0, ...}`: the parts.
    Done(Vec<Reply>),
    /// `{1, message[, removed]}`: a refusal, and how many entries the call
    /// removed for room before it.
    Refused(Error, u64),
    /// `{2, evicted}`: [`AGAIN`].
    Again { evicted: bool },
}

fn answer(reply: Reply) -> Result<Answer, Error> {
    let Reply::Array(mut items) = reply else {
        return Err(protocol(format!("{reply:?}")));
    };
    if items.is_empty() {
        return Err(protocol("an empty answer"));
    }
    match items.remove(0) {
        Reply::Int(0) => Ok(Answer::Done(items)),
        Reply::Int(AGAIN) => Ok(Answer::Again {
            evicted: flag(items.into_iter().next())?,
        }),
        Reply::Int(1) => {
            let mut items = items.into_iter();
            match items.next() {
                Some(Reply::Bytes(message)) => {
                    Ok(Answer::Refused(refusal(&message), removed(items.next())?))
                }
                _ => Err(protocol("a refusal without its message")),
            }
        }
        other => Err(protocol(format!("{other:?}"))),
    }
}

/// The count of removals that ends a write's answer (none: 0).
fn removed(reply: Option<Reply>) -> Result<u64, Error> {
    match reply {
        None => Ok(0),
        reply => u64::try_from(int(reply)?).map_err(|_| protocol("a bad count of removals")),
    }
}

fn int(reply: Option<Reply>) -> Result<i64, Error> {
    match reply {
        Some(Reply::Int(n)) => Ok(n),
        other => Err(protocol(format!("{other:?} for a number"))),
    }
}

fn bytes(reply: Option<Reply>) -> Result<Vec<u8>, Error> {
    match reply {
        Some(Reply::Bytes(data)) => Ok(data),
        other => Err(protocol(format!("{other:?} for bytes"))),
    }
}

fn flag(reply: Option<Reply>) -> Result<bool, Error> {
    Ok(int(reply)? != 0)
}

/// A write's removals for room, over its calls.
#[derive(Default)]
struct Removals {
    removed: u64,
    /// Whether live entries were evicted (the guest's `forcible`).
    evicted: bool,
}

impl RedisDict {
    /// Run operation `op` with `args` on this dict; the answer's parts.
    async fn call(&self, op: &str, args: &[&[u8]], deadline: Instant) -> Result<Vec<Reply>, Error> {
        self.write(op, args, deadline, u64::MAX, &mut Removals::default())
            .await
    }

    /// Run operation `op`, a write that may need room, with `args` on this
    /// dict; the answer's parts. A call removes at most [`SCAN_BATCH`]
    /// entries for room, and answers [`AGAIN`] if it needs more: the call
    /// is made again (after the deadline is checked), at most `budget`
    /// removals in all ([`Error::Fuel`]); `removals` counts them (each
    /// [`AGAIN`] as a whole batch), whatever the answer.
    async fn write(
        &self,
        op: &str,
        args: &[&[u8]],
        deadline: Instant,
        budget: u64,
        removals: &mut Removals,
    ) -> Result<Vec<Reply>, Error> {
        let capacity = self.capacity.to_string();
        let overhead = ENTRY_OVERHEAD.to_string();
        let item_overhead = LIST_ITEM_OVERHEAD.to_string();
        let mut all: Vec<&[u8]> = vec![
            &self.prefix,
            op.as_bytes(),
            capacity.as_bytes(),
            overhead.as_bytes(),
            item_overhead.as_bytes(),
        ];
        let batch = SCAN_BATCH.to_string();
        all.push(batch.as_bytes());
        all.extend_from_slice(args);
        let reply_budget = Budget {
            bytes: self.capacity + REPLY_SLACK,
            items: (self.capacity / ENTRY_OVERHEAD) as usize + 8,
        };
        // A write that must remove many entries does it a batch per call.
        loop {
            let reply = self
                .client
                .eval(&self.share, &all, reply_budget, deadline)
                .await?;
            match answer(reply)? {
                Answer::Done(parts) => return Ok(parts),
                Answer::Refused(error, removed) => {
                    removals.removed = removals.removed.saturating_add(removed);
                    return Err(error);
                }
                Answer::Again { evicted } => {
                    removals.removed = removals.removed.saturating_add(SCAN_BATCH as u64);
                    removals.evicted |= evicted;
                    if removals.removed >= budget {
                        return Err(Error::Fuel);
                    }
                    if Instant::now() >= deadline {
                        return Err(Error::Deadline);
                    }
                }
            }
        }
    }
}

/// A write's answer, from what its calls answered and removed.
fn written<T>(answer: Result<T, Error>, removals: Removals) -> Written<T> {
    Written {
        answer,
        removed: removals.removed,
    }
}

fn boxed<'a, T: Send + 'a>(
    future: impl std::future::Future<Output = Result<T, Error>> + Send + 'a,
) -> DictFuture<'a, T> {
    Box::pin(future)
}

impl Store for RedisDict {
    fn free_space(&self, deadline: Instant) -> DictFuture<'_, u64> {
        boxed(async move {
            let mut parts = self.call("free_space", &[], deadline).await?.into_iter();
            Ok(int(parts.next())?.max(0) as u64)
        })
    }

    fn get(&self, key: Vec<u8>, stale: bool, deadline: Instant) -> DictFuture<'_, Option<Item>> {
        boxed(async move {
            let stale_arg: &[u8] = if stale { b"1" } else { b"0" };
            let mut parts = self
                .call("get", &[&key, stale_arg], deadline)
                .await?
                .into_iter();
            let Some(kind) = parts.next() else {
                return Ok(None);
            };
            let kind = bytes(Some(kind))?;
            let value = decode(&kind, bytes(parts.next())?)?;
            let flags = u32::try_from(int(parts.next())?).map_err(|_| protocol("bad flags"))?;
            let stale = flag(parts.next())?;
            Ok(Some(Item {
                value,
                flags,
                stale,
            }))
        })
    }

    fn store(
        &self,
        key: Vec<u8>,
        value: Option<Value>,
        ttl_ms: u64,
        flags: u32,
        mode: Mode,
        deadline: Instant,
        budget: u64,
    ) -> WriteFuture<'_, bool> {
        Box::pin(async move {
            if value.is_none() && matches!(mode, Mode::Add | Mode::SafeAdd | Mode::Replace) {
                return Written::only(Err(Error::Refused(NIL_ADD)));
            }
            let mode: &[u8] = match mode {
                Mode::Set => b"set",
                Mode::SafeSet => b"safe_set",
                Mode::Add => b"add",
                Mode::SafeAdd => b"safe_add",
                Mode::Replace => b"replace",
            };
            let (kind, data) = match &value {
                Some(value) => encode(value),
                None => (&b""[..], Vec::new()),
            };
            let ttl = ttl_ms.to_string();
            let flags = flags.to_string();
            let mut removals = Removals::default();
            let answer = async {
                let mut parts = self
                    .write(
                        "store",
                        &[&key, mode, kind, &data, ttl.as_bytes(), flags.as_bytes()],
                        deadline,
                        budget,
                        &mut removals,
                    )
                    .await?
                    .into_iter();
                let forcible = flag(parts.next())?;
                removals.removed = removals.removed.saturating_add(removed(parts.next())?);
                Ok(forcible || removals.evicted)
            }
            .await;
            written(answer, removals)
        })
    }

    fn incr(
        &self,
        key: Vec<u8>,
        delta: Value,
        init: Option<Value>,
        init_ttl_ms: u64,
        deadline: Instant,
        budget: u64,
    ) -> WriteFuture<'_, (Value, bool)> {
        Box::pin(async move {
            let (delta_kind, delta_data) = encode(&delta);
            // A missing key starts at init + delta, computed here exactly.
            let start = match init.map(|init| add_numbers(&init, &delta)).transpose() {
                Ok(start) => start,
                Err(error) => return Written::only(Err(error)),
            };
            let (start_kind, start_data) = match &start {
                Some(start) => encode(start),
                None => (&b""[..], Vec::new()),
            };
            let ttl = init_ttl_ms.to_string();
            let mut removals = Removals::default();
            let answer = async {
                let mut parts = self
                    .write(
                        "incr",
                        &[
                            &key,
                            delta_kind,
                            &delta_data,
                            start_kind,
                            &start_data,
                            ttl.as_bytes(),
                        ],
                        deadline,
                        budget,
                        &mut removals,
                    )
                    .await?
                    .into_iter();
                let kind = bytes(parts.next())?;
                let value = decode(&kind, bytes(parts.next())?)?;
                if !matches!(value, Value::Int(_) | Value::Float(_)) {
                    return Err(protocol("incr gave a value that is not a number"));
                }
                let forcible = flag(parts.next())?;
                removals.removed = removals.removed.saturating_add(removed(parts.next())?);
                Ok((value, forcible || removals.evicted))
            }
            .await;
            written(answer, removals)
        })
    }

    fn ttl(&self, key: Vec<u8>, deadline: Instant) -> DictFuture<'_, u64> {
        boxed(async move {
            let mut parts = self.call("ttl", &[&key], deadline).await?.into_iter();
            Ok(int(parts.next())?.max(0) as u64)
        })
    }

    fn expire(&self, key: Vec<u8>, ttl_ms: u64, deadline: Instant) -> DictFuture<'_, ()> {
        boxed(async move {
            let ttl = ttl_ms.to_string();
            self.call("expire", &[&key, ttl.as_bytes()], deadline)
                .await?;
            Ok(())
        })
    }

    fn flush_all(&self, deadline: Instant) -> DictFuture<'_, ()> {
        boxed(async move {
            self.call("flush_all", &[], deadline).await?;
            Ok(())
        })
    }

    fn flush_expired(
        &self,
        max: u32,
        deadline: Instant,
        budget: u64,
    ) -> DictFuture<'_, Scanned<u32>> {
        boxed(async move {
            // A batch of at most SCAN_BATCH removals per call.
            let mut removed: u32 = 0;
            let mut visited: u64 = 0;
            loop {
                let left = if max == 0 { 0 } else { max - removed };
                if max != 0 && left == 0 {
                    break;
                }
                if visited >= budget {
                    return Err(Error::Fuel);
                }
                let left = left.to_string();
                let mut parts = self
                    .call("flush_expired", &[left.as_bytes()], deadline)
                    .await?
                    .into_iter();
                let n = u32::try_from(int(parts.next())?).map_err(|_| protocol("a bad count"))?;
                removed = removed.saturating_add(n);
                visited += u64::from(n) + 1;
                if (n as usize) < SCAN_BATCH {
                    break;
                }
            }
            Ok(Scanned {
                value: removed,
                visited,
            })
        })
    }

    fn get_keys(
        &self,
        max: u32,
        deadline: Instant,
        budget: u64,
    ) -> DictFuture<'_, Scanned<Vec<Vec<u8>>>> {
        boxed(async move {
            // SCAN_BATCH entries of the LRU order per call, from a rank on.
            // Between calls other runs use the dict: a key used meanwhile
            // moves up the order; a key already listed is not listed again.
            let mut keys: Vec<Vec<u8>> = Vec::new();
            let mut listed = std::collections::HashSet::new();
            let mut start: i64 = 0;
            let mut visited: u64 = 0;
            loop {
                if visited >= budget {
                    return Err(Error::Fuel);
                }
                let from = start.to_string();
                let mut parts = self
                    .call("get_keys", &[from.as_bytes()], deadline)
                    .await?
                    .into_iter();
                let next = int(parts.next())?;
                visited += SCAN_BATCH as u64;
                for key in parts {
                    let key = bytes(Some(key))?;
                    if max != 0 && keys.len() >= max as usize {
                        break;
                    }
                    if listed.insert(key.clone()) {
                        keys.push(key);
                    }
                }
                if next < 0 || (max != 0 && keys.len() >= max as usize) {
                    break;
                }
                start = next;
            }
            Ok(Scanned {
                value: keys,
                visited,
            })
        })
    }

    fn push(
        &self,
        key: Vec<u8>,
        value: Value,
        front: bool,
        deadline: Instant,
        budget: u64,
    ) -> WriteFuture<'_, u64> {
        Box::pin(async move {
            let (kind, data) = encode(&value);
            let mut item = Vec::with_capacity(1 + data.len());
            item.extend_from_slice(kind);
            item.extend_from_slice(&data);
            let front: &[u8] = if front { b"1" } else { b"0" };
            let mut removals = Removals::default();
            let answer = async {
                let mut parts = self
                    .write(
                        "push",
                        &[&key, front, &item],
                        deadline,
                        budget,
                        &mut removals,
                    )
                    .await?
                    .into_iter();
                let length = int(parts.next())?.max(0) as u64;
                removals.removed = removals.removed.saturating_add(removed(parts.next())?);
                Ok(length)
            }
            .await;
            written(answer, removals)
        })
    }

    fn pop(&self, key: Vec<u8>, front: bool, deadline: Instant) -> DictFuture<'_, Option<Value>> {
        boxed(async move {
            let front: &[u8] = if front { b"1" } else { b"0" };
            let mut parts = self
                .call("pop", &[&key, front], deadline)
                .await?
                .into_iter();
            let Some(kind) = parts.next() else {
                return Ok(None);
            };
            let kind = bytes(Some(kind))?;
            Ok(Some(decode(&kind, bytes(parts.next())?)?))
        })
    }

    fn llen(&self, key: Vec<u8>, deadline: Instant) -> DictFuture<'_, u64> {
        boxed(async move {
            let mut parts = self.call("llen", &[&key], deadline).await?.into_iter();
            Ok(int(parts.next())?.max(0) as u64)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_through_their_encoding() {
        for value in [
            Value::Str(Bytes::from_static(b"\0bytes\xff")),
            Value::Int(i64::MIN),
            Value::Float(0.1),
            Value::Float(-1e300),
            Value::Float(f64::INFINITY),
            Value::Bool(true),
            Value::Bool(false),
        ] {
            let (kind, data) = encode(&value);
            assert_eq!(decode(kind, data).unwrap(), value);
        }
        assert!(parse_float("-nan").unwrap().is_nan());
        // Lua's %.17g writes exponents with a sign.
        assert_eq!(parse_float("1.2500000000000000e+300"), Some(1.25e300));
    }
}
