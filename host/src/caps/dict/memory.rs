//! Shared dicts in this process's memory: the default backend.
//!
//! One lock per dict, held only for the operation's own bookkeeping
//! (values are reference-counted, so a large value is copied out after the
//! lock is released). Every operation is O(log n) in the number of entries,
//! except those that by nature visit many (`get_keys`, `flush_expired`, and
//! evicting many small entries to make room for one large one), which are
//! bounded by the dict's size.
//!
//! Each entry sits in:
//! - the key index (a hash map with a random seed: keys are hostile);
//! - the LRU order (reads and writes move it to the front; eviction takes
//!   from the back);
//! - the write order, with a sequence number, so that `flush_all` is O(1):
//!   it marks every entry written before it as expired, and those are the
//!   back of the write order;
//! - the expiry index, if it has a time to live.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use super::{
    DictFuture, EXISTS, Error, IS_A_LIST, Item, Mode, NIL_ADD, NO_MEMORY, NOT_A_LIST, NOT_A_NUMBER,
    NOT_FOUND, SCAN_BATCH, Scanned, Store, Value, add_numbers, entry_cost, item_cost, value_size,
};

/// Milliseconds on a monotonic clock (never 0: 0 means "never expires").
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// When an entry stored at `now` for `ttl_ms` expires (0: never).
fn expiry(now: u64, ttl_ms: u64) -> u64 {
    if ttl_ms == 0 {
        0
    } else {
        now.saturating_add(ttl_ms)
    }
}

const NIL: u32 = u32::MAX;

#[derive(Clone, Copy)]
struct Links {
    prev: u32,
    next: u32,
}

const UNLINKED: Links = Links {
    prev: NIL,
    next: NIL,
};

/// A doubly linked list threaded through the nodes: the front is the most
/// recent.
#[derive(Clone, Copy)]
struct Chain {
    front: u32,
    back: u32,
}

const EMPTY: Chain = Chain {
    front: NIL,
    back: NIL,
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Order {
    Lru,
    Writes,
}

/// A stored value (lists only live here).
enum Stored {
    Scalar(Value),
    List(VecDeque<Value>),
}

struct Node {
    key: Arc<[u8]>,
    value: Stored,
    flags: u32,
    /// When it expires on [`now_ms`]'s clock (0: never).
    expires: u64,
    /// When it was last written, in the dict's write sequence.
    seq: u64,
    /// What it costs against the dict's size.
    cost: u64,
    lru: Links,
    writes: Links,
    /// When it last went to the front of the LRU order (in
    /// [`Inner::lru_moves`]): a scan's place in that order is still good
    /// if its entry has not moved since.
    lru_stamp: u64,
}

struct Inner {
    index: HashMap<Arc<[u8]>, u32>,
    nodes: Vec<Option<Node>>,
    free_slots: Vec<u32>,
    lru: Chain,
    writes: Chain,
    /// (expires, slot) of every entry with a time to live.
    expiries: BTreeSet<(u64, u32)>,
    used: u64,
    /// The last write's sequence number.
    seq: u64,
    /// Entries written before this (sequence) are flushed: expired.
    flushed_below: u64,
    /// Moves to the front of the LRU order so far.
    lru_moves: u64,
}

/// One dict in this process.
pub struct MemoryDict {
    capacity: u64,
    inner: Mutex<Inner>,
}

impl MemoryDict {
    pub fn new(capacity: u64) -> MemoryDict {
        MemoryDict {
            capacity,
            inner: Mutex::new(Inner {
                index: HashMap::new(),
                nodes: Vec::new(),
                free_slots: Vec::new(),
                lru: EMPTY,
                writes: EMPTY,
                expiries: BTreeSet::new(),
                used: 0,
                seq: 0,
                flushed_below: 0,
                lru_moves: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The bookkeeping is updated so that a panic cannot leave it half
        // done; a poisoned lock is still consistent.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How many entries the dict holds (expired ones included).
    pub fn len(&self) -> usize {
        self.lock().index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get_now(&self, key: &[u8], stale: bool) -> Result<Option<Item>, Error> {
        let now = now_ms();
        let mut d = self.lock();
        let Some(slot) = d.index.get(key).copied() else {
            return Ok(None);
        };
        let expired = d.expired(slot, now);
        if expired && !stale {
            return Ok(None);
        }
        d.touch(slot);
        let node = d.node(slot);
        match &node.value {
            Stored::List(_) => Err(Error::Refused(IS_A_LIST)),
            Stored::Scalar(value) => Ok(Some(Item {
                value: value.clone(),
                flags: node.flags,
                stale: expired,
            })),
        }
    }

    fn store_now(
        &self,
        key: &[u8],
        value: Option<Value>,
        ttl_ms: u64,
        flags: u32,
        mode: Mode,
    ) -> Result<bool, Error> {
        if value.is_none() && matches!(mode, Mode::Add | Mode::SafeAdd | Mode::Replace) {
            return Err(Error::Refused(NIL_ADD));
        }
        let now = now_ms();
        let mut d = self.lock();
        let (existing, live) = d.find(key, now);
        match mode {
            Mode::Add | Mode::SafeAdd if live.is_some() => return Err(Error::Refused(EXISTS)),
            Mode::Replace if live.is_none() => return Err(Error::Refused(NOT_FOUND)),
            _ => {}
        }
        if let (Some(slot), None) = (existing, live) {
            d.remove(slot);
        }
        let Some(value) = value else {
            if let Some(slot) = live {
                d.remove(slot);
            }
            return Ok(false);
        };
        let cost = entry_cost(key.len(), value_size(&value));
        if cost > self.capacity {
            return Err(Error::Refused(NO_MEMORY));
        }
        let old_cost = live.map_or(0, |slot| d.node(slot).cost);
        let forcible = d
            .make_room(
                self.capacity,
                cost.saturating_sub(old_cost),
                live,
                mode.evicts(),
                now,
            )
            .ok_or(Error::Refused(NO_MEMORY))?;
        match live {
            Some(slot) => {
                d.used = d.used - old_cost + cost;
                let node = d.node_mut(slot);
                node.value = Stored::Scalar(value);
                node.flags = flags;
                node.cost = cost;
                d.set_expiry(slot, expiry(now, ttl_ms));
                d.touch(slot);
                d.rewrite(slot);
            }
            None => {
                d.insert(key, Stored::Scalar(value), flags, expiry(now, ttl_ms), cost);
            }
        }
        Ok(forcible)
    }

    fn incr_now(
        &self,
        key: &[u8],
        delta: &Value,
        init: Option<&Value>,
        init_ttl_ms: u64,
    ) -> Result<(Value, bool), Error> {
        let now = now_ms();
        let mut d = self.lock();
        let (existing, live) = d.find(key, now);
        if let Some(slot) = live {
            let Stored::Scalar(old) = &d.node(slot).value else {
                return Err(Error::Refused(NOT_A_NUMBER));
            };
            let new = add_numbers(old, delta)?;
            // A number costs the same whatever its type: no room needed.
            d.node_mut(slot).value = Stored::Scalar(new.clone());
            d.touch(slot);
            d.rewrite(slot);
            return Ok((new, false));
        }
        if let Some(slot) = existing {
            d.remove(slot);
        }
        let Some(init) = init else {
            return Err(Error::Refused(NOT_FOUND));
        };
        let new = add_numbers(init, delta)?;
        let cost = entry_cost(key.len(), value_size(&new));
        if cost > self.capacity {
            return Err(Error::Refused(NO_MEMORY));
        }
        let forcible = d
            .make_room(self.capacity, cost, None, true, now)
            .ok_or(Error::Refused(NO_MEMORY))?;
        d.insert(
            key,
            Stored::Scalar(new.clone()),
            0,
            expiry(now, init_ttl_ms),
            cost,
        );
        Ok((new, forcible))
    }

    fn ttl_now(&self, key: &[u8]) -> Result<u64, Error> {
        let now = now_ms();
        let d = self.lock();
        match d.find(key, now).1 {
            None => Err(Error::Refused(NOT_FOUND)),
            Some(slot) => match d.node(slot).expires {
                0 => Ok(0),
                expires => Ok(expires - now),
            },
        }
    }

    fn expire_now(&self, key: &[u8], ttl_ms: u64) -> Result<(), Error> {
        let now = now_ms();
        let mut d = self.lock();
        match d.find(key, now).1 {
            None => Err(Error::Refused(NOT_FOUND)),
            Some(slot) => {
                d.set_expiry(slot, expiry(now, ttl_ms));
                Ok(())
            }
        }
    }

    fn flush_all_now(&self) {
        let mut d = self.lock();
        d.flushed_below = d.seq + 1;
    }

    /// Remove expired entries (at most `max`; 0: all), [`SCAN_BATCH`] per
    /// hold of the lock, visiting at most `budget`.
    fn flush_expired_now(
        &self,
        max: u32,
        deadline: Instant,
        budget: u64,
    ) -> Result<Scanned<u32>, Error> {
        let now = now_ms();
        let mut removed: u32 = 0;
        loop {
            if Instant::now() >= deadline {
                return Err(Error::Deadline);
            }
            let mut d = self.lock();
            for _ in 0..SCAN_BATCH {
                if max != 0 && removed >= max {
                    return Ok(Scanned {
                        value: removed,
                        visited: u64::from(removed),
                    });
                }
                let Some(slot) = d.oldest_expired(now) else {
                    return Ok(Scanned {
                        value: removed,
                        visited: u64::from(removed) + 1,
                    });
                };
                if u64::from(removed) >= budget {
                    return Err(Error::Fuel);
                }
                d.remove(slot);
                removed += 1;
            }
            drop(d);
            std::thread::yield_now();
        }
    }

    /// Live keys, least recently used first (at most `max`; 0: all),
    /// [`SCAN_BATCH`] entries per hold of the lock, visiting at most
    /// `budget`. Between batches the dict changes: a key used meanwhile
    /// moves to the front of the order, and the walk starts again from the
    /// back when the entry it stopped at has moved (keys already listed
    /// are skipped, never listed twice).
    fn get_keys_now(
        &self,
        max: u32,
        deadline: Instant,
        budget: u64,
    ) -> Result<Scanned<Vec<Vec<u8>>>, Error> {
        let now = now_ms();
        let mut keys: Vec<Arc<[u8]>> = Vec::new();
        let mut listed: std::collections::HashSet<Arc<[u8]>> = std::collections::HashSet::new();
        let mut visited: u64 = 0;
        // Where the walk stopped: the next entry, and its stamp.
        let mut cursor: Option<(u32, Arc<[u8]>, u64)> = None;
        'walk: loop {
            if Instant::now() >= deadline {
                return Err(Error::Deadline);
            }
            let d = self.lock();
            let mut slot = match cursor.take() {
                Some((slot, key, stamp)) => match d.nodes.get(slot as usize) {
                    Some(Some(node)) if Arc::ptr_eq(&node.key, &key) && node.lru_stamp == stamp => {
                        slot
                    }
                    _ => d.lru.back,
                },
                None => d.lru.back,
            };
            for _ in 0..SCAN_BATCH {
                if slot == NIL || (max != 0 && keys.len() >= max as usize) {
                    break 'walk;
                }
                if visited >= budget {
                    return Err(Error::Fuel);
                }
                visited += 1;
                let node = d.node(slot);
                if !d.expired(slot, now) && !listed.contains(&node.key) {
                    listed.insert(node.key.clone());
                    keys.push(node.key.clone());
                }
                slot = node.lru.prev;
            }
            if slot == NIL {
                break;
            }
            let node = d.node(slot);
            cursor = Some((slot, node.key.clone(), node.lru_stamp));
            drop(d);
            std::thread::yield_now();
        }
        let keys = keys.iter().map(|key| key.to_vec()).collect();
        Ok(Scanned {
            value: keys,
            visited,
        })
    }

    fn push_now(&self, key: &[u8], value: Value, front: bool) -> Result<u64, Error> {
        let now = now_ms();
        let mut d = self.lock();
        let (existing, live) = d.find(key, now);
        if let Some(slot) = live
            && !matches!(d.node(slot).value, Stored::List(_))
        {
            return Err(Error::Refused(NOT_A_LIST));
        }
        if let (Some(slot), None) = (existing, live) {
            d.remove(slot);
        }
        let added = item_cost(&value);
        let Some(slot) = live else {
            // A new list: it never expires.
            let cost = entry_cost(key.len(), 0) + added;
            if cost > self.capacity {
                return Err(Error::Refused(NO_MEMORY));
            }
            d.make_room(self.capacity, cost, None, false, now)
                .ok_or(Error::Refused(NO_MEMORY))?;
            d.insert(key, Stored::List(VecDeque::from([value])), 0, 0, cost);
            return Ok(1);
        };
        if d.node(slot).cost + added > self.capacity {
            return Err(Error::Refused(NO_MEMORY));
        }
        d.make_room(self.capacity, added, Some(slot), false, now)
            .ok_or(Error::Refused(NO_MEMORY))?;
        d.used += added;
        let node = d.node_mut(slot);
        node.cost += added;
        let Stored::List(list) = &mut node.value else {
            unreachable!("checked above")
        };
        if front {
            list.push_front(value);
        } else {
            list.push_back(value);
        }
        let length = list.len() as u64;
        d.touch(slot);
        d.rewrite(slot);
        Ok(length)
    }

    fn pop_now(&self, key: &[u8], front: bool) -> Result<Option<Value>, Error> {
        let now = now_ms();
        let mut d = self.lock();
        let (existing, live) = d.find(key, now);
        let Some(slot) = live else {
            if let Some(slot) = existing {
                d.remove(slot);
            }
            return Ok(None);
        };
        let Stored::List(list) = &mut d.node_mut(slot).value else {
            return Err(Error::Refused(NOT_A_LIST));
        };
        let popped = if front {
            list.pop_front()
        } else {
            list.pop_back()
        };
        let emptied = list.is_empty();
        match popped {
            // Lists are removed when they become empty.
            _ if emptied => d.remove(slot),
            Some(ref value) => {
                let freed = item_cost(value);
                d.node_mut(slot).cost -= freed;
                d.used -= freed;
                d.touch(slot);
            }
            None => {}
        }
        Ok(popped)
    }

    fn llen_now(&self, key: &[u8]) -> Result<u64, Error> {
        let now = now_ms();
        let mut d = self.lock();
        let Some(slot) = d.find(key, now).1 else {
            return Ok(0);
        };
        let Stored::List(list) = &d.node(slot).value else {
            return Err(Error::Refused(NOT_A_LIST));
        };
        let length = list.len() as u64;
        d.touch(slot);
        Ok(length)
    }
}

impl Inner {
    fn node(&self, slot: u32) -> &Node {
        self.nodes[slot as usize]
            .as_ref()
            .expect("a linked slot holds a node")
    }

    fn node_mut(&mut self, slot: u32) -> &mut Node {
        self.nodes[slot as usize]
            .as_mut()
            .expect("a linked slot holds a node")
    }

    /// The entry of `key`, and the same if it is live.
    fn find(&self, key: &[u8], now: u64) -> (Option<u32>, Option<u32>) {
        let existing = self.index.get(key).copied();
        let live = existing.filter(|slot| !self.expired(*slot, now));
        (existing, live)
    }

    fn expired(&self, slot: u32, now: u64) -> bool {
        let node = self.node(slot);
        (node.expires != 0 && node.expires <= now) || node.seq < self.flushed_below
    }

    fn links(&mut self, slot: u32, order: Order) -> &mut Links {
        let node = self.node_mut(slot);
        match order {
            Order::Lru => &mut node.lru,
            Order::Writes => &mut node.writes,
        }
    }

    fn chain(&mut self, order: Order) -> &mut Chain {
        match order {
            Order::Lru => &mut self.lru,
            Order::Writes => &mut self.writes,
        }
    }

    fn unlink(&mut self, slot: u32, order: Order) {
        let Links { prev, next } = *self.links(slot, order);
        if prev != NIL {
            self.links(prev, order).next = next;
        } else {
            self.chain(order).front = next;
        }
        if next != NIL {
            self.links(next, order).prev = prev;
        } else {
            self.chain(order).back = prev;
        }
        *self.links(slot, order) = UNLINKED;
    }

    fn push_front(&mut self, slot: u32, order: Order) {
        let front = self.chain(order).front;
        *self.links(slot, order) = Links {
            prev: NIL,
            next: front,
        };
        if front != NIL {
            self.links(front, order).prev = slot;
        } else {
            self.chain(order).back = slot;
        }
        self.chain(order).front = slot;
        if order == Order::Lru {
            self.lru_moves += 1;
            let stamp = self.lru_moves;
            self.node_mut(slot).lru_stamp = stamp;
        }
    }

    /// A use: the entry goes to the front of the LRU order.
    fn touch(&mut self, slot: u32) {
        if self.lru.front != slot {
            self.unlink(slot, Order::Lru);
            self.push_front(slot, Order::Lru);
        }
    }

    /// A write: the entry gets a new sequence number (it is no longer
    /// flushed) and goes to the front of the write order.
    fn rewrite(&mut self, slot: u32) {
        self.seq += 1;
        let seq = self.seq;
        self.node_mut(slot).seq = seq;
        self.unlink(slot, Order::Writes);
        self.push_front(slot, Order::Writes);
    }

    fn set_expiry(&mut self, slot: u32, expires: u64) {
        let old = self.node(slot).expires;
        if old != 0 {
            self.expiries.remove(&(old, slot));
        }
        if expires != 0 {
            self.expiries.insert((expires, slot));
        }
        self.node_mut(slot).expires = expires;
    }

    fn insert(&mut self, key: &[u8], value: Stored, flags: u32, expires: u64, cost: u64) {
        let key: Arc<[u8]> = Arc::from(key);
        let node = Node {
            key: key.clone(),
            value,
            flags,
            expires: 0,
            seq: 0,
            cost,
            lru: UNLINKED,
            writes: UNLINKED,
            lru_stamp: 0,
        };
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                self.nodes[slot as usize] = Some(node);
                slot
            }
            None => {
                self.nodes.push(Some(node));
                (self.nodes.len() - 1) as u32
            }
        };
        self.index.insert(key, slot);
        self.used += cost;
        self.push_front(slot, Order::Lru);
        self.push_front(slot, Order::Writes);
        self.rewrite(slot);
        self.set_expiry(slot, expires);
    }

    fn remove(&mut self, slot: u32) {
        self.unlink(slot, Order::Lru);
        self.unlink(slot, Order::Writes);
        self.set_expiry(slot, 0);
        if let Some(node) = self.nodes[slot as usize].take() {
            self.index.remove(&node.key);
            self.used -= node.cost;
        }
        self.free_slots.push(slot);
        if self.index.is_empty() {
            // Give the memory of a dict emptied back.
            self.nodes = Vec::new();
            self.free_slots = Vec::new();
            self.index = HashMap::new();
        }
    }

    /// An expired entry: the earliest by time to live, else the oldest
    /// flushed one. (The entry being written is live: never this one.)
    fn oldest_expired(&self, now: u64) -> Option<u32> {
        if let Some((expires, slot)) = self.expiries.first()
            && *expires <= now
        {
            return Some(*slot);
        }
        // The write order is by sequence: flushed entries are at its back.
        let slot = self.writes.back;
        (slot != NIL && self.node(slot).seq < self.flushed_below).then_some(slot)
    }

    /// Room for `need` more bytes within `capacity`: expired entries go
    /// first, then, if `evict`, the least recently used live ones; `keep`
    /// (the entry being written) never goes. Whether live entries were
    /// evicted; `None` if there is no room.
    fn make_room(
        &mut self,
        capacity: u64,
        need: u64,
        keep: Option<u32>,
        evict: bool,
        now: u64,
    ) -> Option<bool> {
        while self.used + need > capacity {
            match self.oldest_expired(now) {
                Some(slot) => self.remove(slot),
                None => break,
            }
        }
        if self.used + need <= capacity {
            return Some(false);
        }
        if !evict {
            return None;
        }
        while self.used + need > capacity {
            let mut victim = self.lru.back;
            if Some(victim) == keep && victim != NIL {
                victim = self.node(victim).lru.prev;
            }
            if victim == NIL {
                return None;
            }
            self.remove(victim);
        }
        Some(true)
    }
}

impl Store for MemoryDict {
    fn free_space(&self, _deadline: Instant) -> DictFuture<'_, u64> {
        let used = self.lock().used;
        Box::pin(std::future::ready(Ok(self.capacity.saturating_sub(used))))
    }

    fn get(&self, key: Vec<u8>, stale: bool, _deadline: Instant) -> DictFuture<'_, Option<Item>> {
        Box::pin(std::future::ready(self.get_now(&key, stale)))
    }

    fn store(
        &self,
        key: Vec<u8>,
        value: Option<Value>,
        ttl_ms: u64,
        flags: u32,
        mode: Mode,
        _deadline: Instant,
    ) -> DictFuture<'_, bool> {
        Box::pin(std::future::ready(
            self.store_now(&key, value, ttl_ms, flags, mode),
        ))
    }

    fn incr(
        &self,
        key: Vec<u8>,
        delta: Value,
        init: Option<Value>,
        init_ttl_ms: u64,
        _deadline: Instant,
    ) -> DictFuture<'_, (Value, bool)> {
        Box::pin(std::future::ready(self.incr_now(
            &key,
            &delta,
            init.as_ref(),
            init_ttl_ms,
        )))
    }

    fn ttl(&self, key: Vec<u8>, _deadline: Instant) -> DictFuture<'_, u64> {
        Box::pin(std::future::ready(self.ttl_now(&key)))
    }

    fn expire(&self, key: Vec<u8>, ttl_ms: u64, _deadline: Instant) -> DictFuture<'_, ()> {
        Box::pin(std::future::ready(self.expire_now(&key, ttl_ms)))
    }

    fn flush_all(&self, _deadline: Instant) -> DictFuture<'_, ()> {
        self.flush_all_now();
        Box::pin(std::future::ready(Ok(())))
    }

    fn flush_expired(
        &self,
        max: u32,
        deadline: Instant,
        budget: u64,
    ) -> DictFuture<'_, Scanned<u32>> {
        Box::pin(std::future::ready(
            self.flush_expired_now(max, deadline, budget),
        ))
    }

    fn get_keys(
        &self,
        max: u32,
        deadline: Instant,
        budget: u64,
    ) -> DictFuture<'_, Scanned<Vec<Vec<u8>>>> {
        Box::pin(std::future::ready(self.get_keys_now(max, deadline, budget)))
    }

    fn push(
        &self,
        key: Vec<u8>,
        value: Value,
        front: bool,
        _deadline: Instant,
    ) -> DictFuture<'_, u64> {
        Box::pin(std::future::ready(self.push_now(&key, value, front)))
    }

    fn pop(&self, key: Vec<u8>, front: bool, _deadline: Instant) -> DictFuture<'_, Option<Value>> {
        Box::pin(std::future::ready(self.pop_now(&key, front)))
    }

    fn llen(&self, key: Vec<u8>, _deadline: Instant) -> DictFuture<'_, u64> {
        Box::pin(std::future::ready(self.llen_now(&key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::dict::ENTRY_OVERHEAD;
    use bytes::Bytes;

    fn s(text: &str) -> Option<Value> {
        Some(Value::Str(Bytes::copy_from_slice(text.as_bytes())))
    }

    #[test]
    fn the_overhead_covers_the_bookkeeping() {
        // A node, its slot, its index entry (key pointer and slot), its
        // expiry index entry and the key's reference count header.
        let bookkeeping = size_of::<Option<Node>>()
            + size_of::<(Arc<[u8]>, u32)>()
            + size_of::<(u64, u32)>()
            + 2 * size_of::<usize>();
        assert!(
            bookkeeping as u64 <= ENTRY_OVERHEAD,
            "{bookkeeping} bytes of bookkeeping per entry"
        );
    }

    #[test]
    fn eviction_takes_the_least_recently_used() {
        let cost = entry_cost(1, 1);
        let dict = MemoryDict::new(cost * 3);
        for key in ["a", "b", "c"] {
            assert_eq!(
                dict.store_now(key.as_bytes(), s("x"), 0, 0, Mode::Set),
                Ok(false)
            );
        }
        // "a" is used: "b" is now the least recently used.
        assert!(dict.get_now(b"a", false).unwrap().is_some());
        assert_eq!(dict.store_now(b"d", s("x"), 0, 0, Mode::Set), Ok(true));
        assert!(dict.get_now(b"b", false).unwrap().is_none());
        assert_eq!(dict.len(), 3);
        assert_eq!(
            dict.store_now(b"e", s("x"), 0, 0, Mode::SafeSet),
            Err(Error::Refused(NO_MEMORY))
        );
        assert_eq!(
            dict.store_now(b"a", s("y"), 0, 0, Mode::SafeAdd),
            Err(Error::Refused(EXISTS))
        );
    }

    #[test]
    fn flushed_entries_are_stale_and_go_first() {
        let cost = entry_cost(1, 1);
        let dict = MemoryDict::new(cost * 2);
        dict.store_now(b"a", s("1"), 0, 7, Mode::Set).unwrap();
        dict.store_now(b"b", s("2"), 0, 0, Mode::Set).unwrap();
        dict.flush_all_now();
        assert_eq!(dict.get_now(b"a", false), Ok(None));
        let stale = dict.get_now(b"a", true).unwrap().unwrap();
        assert!(stale.stale && stale.flags == 7);
        // A flushed entry makes room without counting as forcible.
        assert_eq!(dict.store_now(b"c", s("3"), 0, 0, Mode::SafeSet), Ok(false));
        assert_eq!(dict.len(), 2);
        let far = Instant::now() + std::time::Duration::from_secs(60);
        assert_eq!(dict.flush_expired_now(0, far, u64::MAX).unwrap().value, 1);
        assert_eq!(
            dict.get_keys_now(0, far, u64::MAX).unwrap().value,
            vec![b"c".to_vec()]
        );
    }
}
