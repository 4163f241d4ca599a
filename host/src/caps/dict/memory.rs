//! Shared dicts in this process's memory: the default backend.
//!
//! One lock per dict, held only for the operation's own bookkeeping
//! (values are reference-counted, so a large value is copied out after the
//! lock is released). Every operation is O(log n) in the number of entries,
//! except those that by nature visit many: `get_keys`, `flush_expired`, and
//! a write that must remove many small entries (expired, or evicted) to make
//! room for a large one. Those hold the lock for at most [`SCAN_BATCH`]
//! entries at a time, check the run's deadline between batches, and report
//! how many entries they visited or removed, which the run pays for in fuel
//! ([`super::SCAN_FUEL_PER_ENTRY`] each). A write that needs more than a
//! batch of removals removes a batch, releases the lock and starts again:
//! the removals change nothing but the room, and the write is done, or
//! refused, as it finds the dict on its last attempt.
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
    NOT_FOUND, SCAN_BATCH, Scanned, Store, Value, WriteFuture, Written, add_numbers, entry_cost,
    item_cost, value_size,
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

    /// Do a write that may need room: `attempt` is the whole write, under
    /// the lock, with the clock's time; it makes room with
    /// [`Inner::make_room`], and when that needs more removals than a batch
    /// (`Step::Again`: it removed a batch and changed nothing else), the
    /// lock is released, the deadline checked, and the write attempted
    /// again from the start (other runs may have used the dict meanwhile).
    /// At most `budget` removals in all ([`Error::Fuel`] past it).
    fn write<T>(
        &self,
        deadline: Instant,
        budget: u64,
        mut attempt: impl FnMut(&mut Inner, u64, &mut Removals) -> Step<T>,
    ) -> Written<T> {
        let mut removals = Removals {
            budget,
            ..Removals::default()
        };
        loop {
            removals.batch = 0;
            let step = attempt(&mut self.lock(), now_ms(), &mut removals);
            let answer = match step {
                Step::Done(answer) => answer,
                Step::Again if removals.done >= budget => Err(Error::Fuel),
                Step::Again => {
                    std::thread::yield_now();
                    if Instant::now() < deadline {
                        continue;
                    }
                    Err(Error::Deadline)
                }
            };
            return Written {
                answer,
                removed: removals.done,
            };
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn store_now(
        &self,
        key: &[u8],
        value: Option<Value>,
        ttl_ms: u64,
        flags: u32,
        mode: Mode,
        deadline: Instant,
        budget: u64,
    ) -> Written<bool> {
        if value.is_none() && matches!(mode, Mode::Add | Mode::SafeAdd | Mode::Replace) {
            return Written::only(Err(Error::Refused(NIL_ADD)));
        }
        let capacity = self.capacity;
        self.write(deadline, budget, |d, now, removals| {
            let (existing, live) = d.find(key, now);
            match mode {
                Mode::Add | Mode::SafeAdd if live.is_some() => {
                    return Step::Done(Err(Error::Refused(EXISTS)));
                }
                Mode::Replace if live.is_none() => {
                    return Step::Done(Err(Error::Refused(NOT_FOUND)));
                }
                _ => {}
            }
            if let (Some(slot), None) = (existing, live) {
                d.remove(slot);
            }
            let Some(value) = &value else {
                if let Some(slot) = live {
                    d.remove(slot);
                }
                return Step::Done(Ok(false));
            };
            let cost = entry_cost(key.len(), value_size(value));
            if cost > capacity {
                return Step::Done(Err(Error::Refused(NO_MEMORY)));
            }
            let old_cost = live.map_or(0, |slot| d.node(slot).cost);
            let need = cost.saturating_sub(old_cost);
            match d.make_room(capacity, need, live, mode.evicts(), now, removals) {
                Room::Made => {}
                Room::Full => return Step::Done(Err(Error::Refused(NO_MEMORY))),
                Room::Again => return Step::Again,
            }
            let value = Stored::Scalar(value.clone());
            match live {
                Some(slot) => {
                    d.used = d.used - old_cost + cost;
                    let node = d.node_mut(slot);
                    node.value = value;
                    node.flags = flags;
                    node.cost = cost;
                    d.set_expiry(slot, expiry(now, ttl_ms));
                    d.touch(slot);
                    d.rewrite(slot);
                }
                None => d.insert(key, value, flags, expiry(now, ttl_ms), cost),
            }
            Step::Done(Ok(removals.evicted))
        })
    }

    fn incr_now(
        &self,
        key: &[u8],
        delta: &Value,
        init: Option<&Value>,
        init_ttl_ms: u64,
        deadline: Instant,
        budget: u64,
    ) -> Written<(Value, bool)> {
        let capacity = self.capacity;
        self.write(deadline, budget, |d, now, removals| {
            let (existing, live) = d.find(key, now);
            if let Some(slot) = live {
                let Stored::Scalar(old) = &d.node(slot).value else {
                    return Step::Done(Err(Error::Refused(NOT_A_NUMBER)));
                };
                let new = match add_numbers(old, delta) {
                    Ok(new) => new,
                    Err(error) => return Step::Done(Err(error)),
                };
                // A number costs the same whatever its type: no room needed.
                d.node_mut(slot).value = Stored::Scalar(new.clone());
                d.touch(slot);
                d.rewrite(slot);
                return Step::Done(Ok((new, false)));
            }
            if let Some(slot) = existing {
                d.remove(slot);
            }
            let Some(init) = init else {
                return Step::Done(Err(Error::Refused(NOT_FOUND)));
            };
            let new = match add_numbers(init, delta) {
                Ok(new) => new,
                Err(error) => return Step::Done(Err(error)),
            };
            let cost = entry_cost(key.len(), value_size(&new));
            if cost > capacity {
                return Step::Done(Err(Error::Refused(NO_MEMORY)));
            }
            match d.make_room(capacity, cost, None, true, now, removals) {
                Room::Made => {}
                Room::Full => return Step::Done(Err(Error::Refused(NO_MEMORY))),
                Room::Again => return Step::Again,
            }
            d.insert(
                key,
                Stored::Scalar(new.clone()),
                0,
                expiry(now, init_ttl_ms),
                cost,
            );
            Step::Done(Ok((new, removals.evicted)))
        })
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

    fn push_now(
        &self,
        key: &[u8],
        value: Value,
        front: bool,
        deadline: Instant,
        budget: u64,
    ) -> Written<u64> {
        let capacity = self.capacity;
        let added = item_cost(&value);
        self.write(deadline, budget, |d, now, removals| {
            let (existing, live) = d.find(key, now);
            if let Some(slot) = live
                && !matches!(d.node(slot).value, Stored::List(_))
            {
                return Step::Done(Err(Error::Refused(NOT_A_LIST)));
            }
            if let (Some(slot), None) = (existing, live) {
                d.remove(slot);
            }
            let Some(slot) = live else {
                // A new list: it never expires.
                let cost = entry_cost(key.len(), 0) + added;
                if cost > capacity {
                    return Step::Done(Err(Error::Refused(NO_MEMORY)));
                }
                match d.make_room(capacity, cost, None, false, now, removals) {
                    Room::Made => {}
                    Room::Full => return Step::Done(Err(Error::Refused(NO_MEMORY))),
                    Room::Again => return Step::Again,
                }
                let list = VecDeque::from([value.clone()]);
                d.insert(key, Stored::List(list), 0, 0, cost);
                return Step::Done(Ok(1));
            };
            if d.node(slot).cost + added > capacity {
                return Step::Done(Err(Error::Refused(NO_MEMORY)));
            }
            match d.make_room(capacity, added, Some(slot), false, now, removals) {
                Room::Made => {}
                Room::Full => return Step::Done(Err(Error::Refused(NO_MEMORY))),
                Room::Again => return Step::Again,
            }
            d.used += added;
            let node = d.node_mut(slot);
            node.cost += added;
            let Stored::List(list) = &mut node.value else {
                unreachable!("checked above")
            };
            if front {
                list.push_front(value.clone());
            } else {
                list.push_back(value.clone());
            }
            let length = list.len() as u64;
            d.touch(slot);
            d.rewrite(slot);
            Step::Done(Ok(length))
        })
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
    /// (the entry being written) never goes. At most what `removals`
    /// allows: a batch ([`SCAN_BATCH`]) per hold of the lock, within the
    /// write's budget; past it, [`Room::Again`] (the removals made stay: they
    /// change nothing but the room).
    fn make_room(
        &mut self,
        capacity: u64,
        need: u64,
        keep: Option<u32>,
        evict: bool,
        now: u64,
        removals: &mut Removals,
    ) -> Room {
        while self.used + need > capacity {
            let Some(slot) = self.oldest_expired(now) else {
                break;
            };
            if !removals.may_remove() {
                return Room::Again;
            }
            self.remove(slot);
            removals.count(false);
        }
        if self.used + need <= capacity {
            return Room::Made;
        }
        if !evict {
            return Room::Full;
        }
        while self.used + need > capacity {
            let mut victim = self.lru.back;
            if Some(victim) == keep && victim != NIL {
                victim = self.node(victim).lru.prev;
            }
            if victim == NIL {
                return Room::Full;
            }
            if !removals.may_remove() {
                return Room::Again;
            }
            self.remove(victim);
            removals.count(true);
        }
        Room::Made
    }
}

/// A write's removals to make room, over all its attempts.
#[derive(Default)]
struct Removals {
    /// Removed so far.
    done: u64,
    /// Removed in the current attempt (hold of the lock).
    batch: usize,
    /// Whether live entries were evicted (the guest's `forcible`).
    evicted: bool,
    /// Most removals in all.
    budget: u64,
}

impl Removals {
    fn may_remove(&self) -> bool {
        self.batch < SCAN_BATCH && self.done < self.budget
    }

    fn count(&mut self, live: bool) {
        self.done += 1;
        self.batch += 1;
        self.evicted |= live;
    }
}

/// What [`Inner::make_room`] made.
#[derive(Debug, PartialEq, Eq)]
enum Room {
    /// Room for the write.
    Made,
    /// No room: nothing left that may go.
    Full,
    /// Not room yet, and no more removals now: release the lock, then
    /// attempt the write again.
    Again,
}

/// One attempt at a write, under the lock: its answer, or
/// [`Room::Again`].
enum Step<T> {
    Done(Result<T, Error>),
    Again,
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
        deadline: Instant,
        budget: u64,
    ) -> WriteFuture<'_, bool> {
        Box::pin(std::future::ready(
            self.store_now(&key, value, ttl_ms, flags, mode, deadline, budget),
        ))
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
        Box::pin(std::future::ready(self.incr_now(
            &key,
            &delta,
            init.as_ref(),
            init_ttl_ms,
            deadline,
            budget,
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
        deadline: Instant,
        budget: u64,
    ) -> WriteFuture<'_, u64> {
        Box::pin(std::future::ready(
            self.push_now(&key, value, front, deadline, budget),
        ))
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

    fn far() -> Instant {
        Instant::now() + std::time::Duration::from_secs(60)
    }

    /// A store with all the time and fuel it wants: its answer.
    fn set(dict: &MemoryDict, key: &str, value: Option<Value>, mode: Mode) -> Result<bool, Error> {
        dict.store_now(key.as_bytes(), value, 0, 0, mode, far(), u64::MAX)
            .answer
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
            assert_eq!(set(&dict, key, s("x"), Mode::Set), Ok(false));
        }
        // "a" is used: "b" is now the least recently used.
        assert!(dict.get_now(b"a", false).unwrap().is_some());
        assert_eq!(set(&dict, "d", s("x"), Mode::Set), Ok(true));
        assert!(dict.get_now(b"b", false).unwrap().is_none());
        assert_eq!(dict.len(), 3);
        assert_eq!(
            set(&dict, "e", s("x"), Mode::SafeSet),
            Err(Error::Refused(NO_MEMORY))
        );
        assert_eq!(
            set(&dict, "a", s("y"), Mode::SafeAdd),
            Err(Error::Refused(EXISTS))
        );
    }

    /// A write that needs thousands of removals (expired ones first, then
    /// the least recently used) makes them a batch per hold of the lock,
    /// reports them all, and ends with the write done and the most recently
    /// used entries kept.
    #[test]
    fn room_is_made_a_batch_per_hold_of_the_lock() {
        let cost = entry_cost(6, 1);
        let dict = MemoryDict::new(cost * 3000);
        let key = |prefix: char, i: usize| format!("{prefix}{i:05}");
        for i in 0..1500 {
            set(&dict, &key('e', i), s("x"), Mode::Set).unwrap();
        }
        dict.flush_all_now();
        for i in 0..1500 {
            set(&dict, &key('k', i), s("x"), Mode::Set).unwrap();
        }
        // k00000 is now the most recently used.
        assert!(dict.get_now(b"k00000", false).unwrap().is_some());
        assert_eq!(dict.len(), 3000);

        // One hold of the lock removes at most a batch, expired ones first.
        let mut removals = Removals {
            budget: u64::MAX,
            ..Removals::default()
        };
        let room = dict.lock().make_room(
            dict.capacity,
            cost * 2500,
            None,
            true,
            now_ms(),
            &mut removals,
        );
        assert_eq!(room, Room::Again);
        assert_eq!(
            (removals.done, removals.evicted),
            (SCAN_BATCH as u64, false)
        );
        assert_eq!(dict.len(), 3000 - SCAN_BATCH);
        assert_eq!(dict.get_now(b"e01023", true), Ok(None));
        assert!(dict.get_now(b"e01024", true).unwrap().unwrap().stale);

        // A store past its deadline stops after one batch (the expired
        // entries left, then the least recently used), its write not done.
        // It costs 2,900 entries: 100 stay.
        let big = vec![b'v'; (cost * 2900 - ENTRY_OVERHEAD - 3) as usize];
        let big = Some(Value::Str(Bytes::from(big)));
        let past = Instant::now();
        let stopped = dict.store_now(b"big", big.clone(), 0, 0, Mode::Set, past, u64::MAX);
        assert_eq!(stopped.answer, Err(Error::Deadline));
        assert_eq!(stopped.removed, SCAN_BATCH as u64);
        assert_eq!(dict.get_now(b"big", false), Ok(None));
        assert_eq!(dict.len(), 3000 - 2 * SCAN_BATCH);
        // Short of its budget: stopped on fuel, having removed that much and
        // no more.
        let short = dict.store_now(b"big", big.clone(), 0, 0, Mode::Set, far(), 300);
        assert_eq!((short.answer, short.removed), (Err(Error::Fuel), 300));
        assert_eq!(dict.len(), 3000 - 2 * SCAN_BATCH - 300);
        assert_eq!(dict.get_now(b"big", false), Ok(None));

        // Full again, k00000 the most recently used: the whole store takes
        // three batches, and is done.
        let mut next = 1500;
        while dict.len() < 3000 {
            set(&dict, &key('k', next), s("x"), Mode::Set).unwrap();
            next += 1;
        }
        assert!(dict.get_now(b"k00000", false).unwrap().is_some());
        let stored = dict.store_now(b"big", big, 0, 0, Mode::Set, far(), u64::MAX);
        assert_eq!(stored.answer, Ok(true));
        assert_eq!(stored.removed, 2900);
        assert_eq!(dict.len(), 3000 - 2900 + 1);
        assert!(dict.get_now(b"big", false).unwrap().is_some());
        assert!(dict.lock().used <= dict.capacity);
        // No expired entry is left; of the live ones, the most recently
        // used stay (least recently used first): the last written, then
        // k00000.
        let keys = dict.get_keys_now(0, far(), u64::MAX).unwrap().value;
        let kept: Vec<String> = keys
            .iter()
            .map(|key| String::from_utf8(key.clone()).unwrap())
            .filter(|key| key != "big")
            .collect();
        let mut expected: Vec<String> = (next - 99..next).map(|i| key('k', i)).collect();
        expected.push(key('k', 0));
        assert_eq!(kept, expected);
    }

    /// Pushes and `incr` make room the same way (pushes remove only
    /// expired entries).
    #[test]
    fn pushes_and_increments_make_room_in_batches() {
        let cost = entry_cost(6, 1);
        let dict = MemoryDict::new(cost * 3000);
        for i in 0..3000 {
            set(&dict, &format!("e{i:05}"), s("x"), Mode::Set).unwrap();
        }
        dict.flush_all_now();
        let big = Value::Str(Bytes::from(vec![b'v'; (cost * 2000) as usize]));
        let pushed = dict.push_now(b"list", big, true, far(), u64::MAX);
        assert_eq!(pushed.answer, Ok(1));
        assert!(pushed.removed > SCAN_BATCH as u64, "{}", pushed.removed);
        assert_eq!(dict.len() as u64, 3000 - pushed.removed + 1);

        let dict = MemoryDict::new(entry_cost(5, 8) * 3000);
        for i in 0..3000 {
            let key = format!("{i:05}");
            set(&dict, &key, Some(Value::Int(i)), Mode::Set).unwrap();
        }
        let past = Instant::now();
        let one = Value::Int(1);
        let stopped = dict.incr_now(b"nnnnn", &one, Some(&one), 0, past, u64::MAX);
        // Room for one entry: one eviction, within the first batch.
        assert_eq!(stopped.answer, Ok((Value::Int(2), true)));
        assert_eq!(stopped.removed, 1);
    }

    #[test]
    fn flushed_entries_are_stale_and_go_first() {
        let cost = entry_cost(1, 1);
        let dict = MemoryDict::new(cost * 2);
        let stored = dict.store_now(b"a", s("1"), 0, 7, Mode::Set, far(), u64::MAX);
        assert_eq!(stored.answer, Ok(false));
        set(&dict, "b", s("2"), Mode::Set).unwrap();
        dict.flush_all_now();
        assert_eq!(dict.get_now(b"a", false), Ok(None));
        let stale = dict.get_now(b"a", true).unwrap().unwrap();
        assert!(stale.stale && stale.flags == 7);
        // A flushed entry makes room without counting as forcible.
        let stored = dict.store_now(b"c", s("3"), 0, 0, Mode::SafeSet, far(), u64::MAX);
        assert_eq!((stored.answer, stored.removed), (Ok(false), 1));
        assert_eq!(dict.len(), 2);
        assert_eq!(dict.flush_expired_now(0, far(), u64::MAX).unwrap().value, 1);
        assert_eq!(
            dict.get_keys_now(0, far(), u64::MAX).unwrap().value,
            vec![b"c".to_vec()]
        );
    }
}
