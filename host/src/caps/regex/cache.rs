//! Compiled patterns ([`Compiled`], each with its search, [`Compiled::scan`])
//! and the [`Cache`] of them: one partition per tenant, each bounded in
//! entries, pattern bytes and memory, least recently used out first, so that
//! no tenant can evict another's patterns or time its hits.
//!
//! A search is host work done for the guest: it is paid for with the run's
//! fuel and stops at the run's deadline ([`crate::sandbox::meter`]). The
//! engine's own searches cannot be interrupted, so the match is found with
//! lazy DFAs stepped here, a byte at a time, checking the deadline every
//! [`STEP_BYTES`]: forward to the match's end (the whole rest of the subject
//! when nothing matches), backward to its start; only then is the engine
//! asked for the groups, within the match. The fuel is counted in work done
//! (bytes stepped, DFA states built, bytes the engine went through: the
//! [`rates`]), never in time, so a search costs the same on a loaded host.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

use regex_automata::hybrid::LazyStateID;
use regex_automata::hybrid::dfa::{Cache as DfaCache, DFA};
use regex_automata::nfa::thompson::{self, WhichCaptures};
use regex_automata::util::primitives::NonMaxUsize;
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input, MatchKind, PatternID, meta};

use super::Syntax;
use super::pcre::{MAX_NESTING, translate};
use crate::sandbox::HostWork;

/// Most heap one compiled pattern's automaton may take.
pub const NFA_SIZE_LIMIT: usize = 2 << 20;
/// Most memory the lazy DFA of one search may use for its states (past it,
/// the engine clears it, or falls back to a slower linear engine).
const LAZY_DFA_CAPACITY: usize = 1 << 20;
/// A search's scratch memory is kept with its pattern for the next search
/// only when it is at most this big.
const KEPT_SCRATCH_BYTES: usize = 256 << 10;
/// Most patterns one tenant's partition of the cache keeps.
pub const CACHE_MAX_ENTRIES: usize = 512;
/// Most pattern bytes one tenant's partition keeps (all entries together).
pub const CACHE_MAX_PATTERN_BYTES: usize = 1 << 20;
/// Most memory one tenant's compiled patterns take (all its entries
/// together, counting each one's kept scratch memory at its bound).
pub const CACHE_MAX_MEMORY: usize = 64 << 20;
/// Most memory all tenants' compiled patterns take together; past it, the
/// tenant whose partition is the biggest loses its least recently used.
pub const CACHE_MAX_TOTAL_MEMORY: usize = 256 << 20;
/// Most offsets (two per group per match) one `scan` returns.
pub const MAX_OFFSETS: usize = 64 * 1024;
/// The offset of a group that did not take part in a match.
pub const NO_OFFSET: u32 = u32::MAX;
/// Subject bytes a search steps through between two checks of the run's
/// deadline.
pub const STEP_BYTES: usize = 256;

/// What a search or a compile costs in fuel, counted in the work done, not
/// in time, so that a script pays the same on a busy host as on an idle one.
/// The rates are what each unit of work takes of a core's time, at worst,
/// at the guest's rate of about 10 fuel a nanosecond (measured as
/// `docs/sandbox.md` says, with some margin).
pub mod rates {
    /// A byte a lazy DFA steps through (forward or back).
    pub const STEP: u64 = 64;
    /// A byte of DFA state a lazy DFA builds (its states are built as a
    /// search first needs them, and again after its cache was cleared).
    pub const STATE_BYTE: u64 = 128;
    /// A byte the engine's own search goes through (capture groups within
    /// a match, or a whole search the lazy DFAs cannot do) ...
    pub const ENGINE_BYTE: u64 = 800;
    /// ... and in addition, per byte, per state of the pattern's automaton.
    pub const ENGINE_BYTE_STATE: u64 = 8;
    /// A byte of pattern compiled ...
    pub const PATTERN_BYTE: u64 = 8_000;
    /// ... and a byte of what it compiled to.
    pub const COMPILED_BYTE: u64 = 200;
}

/// A compiled pattern, shared by every run of its tenant that uses it./// A compiled pattern, shared by every run of its tenant that uses it.
pub struct Compiled {
    regex: meta::Regex,
    /// Finds where the leftmost-first match ends (leftmost-first, either
    /// anchored or not).
    forward: DFA,
    /// From a match's end, back to its start (all matches, anchored).
    reverse: DFA,
    /// Capture groups, not counting group 0.
    pub groups: u32,
    pub names: Vec<(String, u32)>,
    utf8: bool,
    /// `\G` at the start: every search is anchored.
    anchored: bool,
    /// Scratch memory for one search, kept for the next one.
    scratch: Mutex<Option<Scratch>>,
    /// What this entry counts for against [`CACHE_MAX_MEMORY`].
    weight: usize,
    /// States of its automaton (what the engine's search costs a byte).
    states: u64,
}

struct Scratch {
    regex: meta::Cache,
    forward: DfaCache,
    reverse: DfaCache,
}

impl Scratch {
    fn memory_usage(&self) -> usize {
        self.regex.memory_usage() + self.forward.memory_usage() + self.reverse.memory_usage()
    }
}

/// Why a search did not finish.
#[derive(Debug)]
pub enum ScanError {
    /// The subject cannot be searched (the message says why).
    Refused(String),
    /// The run's fuel or time ran out (the error stops the run).
    Stopped(wasmtime::Error),
}

/// The meter of a search: the run's account, or none (unmetered: tests).
pub type Meter<'a> = Option<&'a mut HostWork>;

/// The meter of one scan: counts its work in fuel ([`rates`]), checks the
/// run's deadline every step and charges the run's fuel every
/// [`CHARGE_FUEL`] and at the end.
struct Stepper<'m, 'a> {
    meter: &'m mut Meter<'a>,
    /// Fuel counted, not charged yet.
    owed: u64,
}

/// Fuel counted between two charges of the run's account.
const CHARGE_FUEL: u64 = 1 << 20;

impl<'m, 'a> Stepper<'m, 'a> {
    fn new(meter: &'m mut Meter<'a>) -> Self {
        Stepper { meter, owed: 0 }
    }

    /// A lazy DFA stepped through `bytes` more, building `built` bytes of
    /// states on the way.
    fn step(&mut self, bytes: usize, built: usize) -> Result<(), ScanError> {
        let fuel = HostWork::cost(bytes, rates::STEP)
            .saturating_add(HostWork::cost(built, rates::STATE_BYTE));
        self.owe(fuel)
    }

    /// The engine's own search is about to go through `bytes` with an
    /// automaton of `states`: charged now, before it starts (it cannot be
    /// stopped once started, so a run without the fuel for it never starts
    /// it, and the fuel bounds how long it can run past the deadline).
    fn engine(&mut self, bytes: usize, states: u64) -> Result<(), ScanError> {
        let rate =
            rates::ENGINE_BYTE.saturating_add(states.saturating_mul(rates::ENGINE_BYTE_STATE));
        self.owe(HostWork::cost(bytes, rate))?;
        self.settle()
    }

    fn owe(&mut self, fuel: u64) -> Result<(), ScanError> {
        let Some(work) = self.meter.as_deref_mut() else {
            return Ok(());
        };
        work.check_deadline().map_err(ScanError::Stopped)?;
        self.owed = self.owed.saturating_add(fuel);
        if self.owed >= CHARGE_FUEL {
            self.settle()?;
        }
        Ok(())
    }

    /// Charge what was counted since the last charge.
    fn settle(&mut self) -> Result<(), ScanError> {
        let Some(work) = self.meter.as_deref_mut() else {
            return Ok(());
        };
        let owed = std::mem::take(&mut self.owed);
        work.charge(owed).map_err(ScanError::Stopped)
    }
}

/// How much of a lazy DFA's states a search built: its cache's memory and
/// clear count when last looked at.
struct Built {
    clears: usize,
    memory: usize,
}

impl Built {
    fn of(cache: &DfaCache) -> Built {
        Built {
            clears: cache.clear_count(),
            memory: cache.memory_usage(),
        }
    }

    /// Bytes of states built since last looked at (a cache cleared in
    /// between counts as full when it was cleared).
    fn since(&mut self, cache: &DfaCache) -> usize {
        let now = Built::of(cache);
        let clears = now.clears.saturating_sub(self.clears);
        let built = if clears == 0 {
            now.memory.saturating_sub(self.memory)
        } else {
            clears
                .saturating_mul(LAZY_DFA_CAPACITY)
                .saturating_sub(self.memory)
                .saturating_add(now.memory)
        };
        *self = now;
        built
    }
}

/// How a pattern refused for its size (after building up to the limit)
/// is told.
const TOO_BIG: &str = "pattern too big";

/// The fuel a compile costs: its pattern's bytes, and what it compiled to
/// (for one that failed: as much as a compile may build).
fn compile_fuel(pattern: usize, compiled: Option<&Compiled>) -> u64 {
    let built = compiled.map_or(NFA_SIZE_LIMIT, |c| c.weight - KEPT_SCRATCH_BYTES);
    HostWork::cost(pattern, rates::PATTERN_BYTE)
        .saturating_add(HostWork::cost(built, rates::COMPILED_BYTE))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The message for a pattern that does not compile: the pattern (cut if
/// long, invalid UTF-8 replaced) and why.
fn compile_error(pattern: &[u8], reason: &str) -> String {
    const SHOWN: usize = 200;
    let shown = String::from_utf8_lossy(&pattern[..pattern.len().min(SHOWN)]);
    let more = if pattern.len() > SHOWN { "..." } else { "" };
    format!("failed to compile regex \"{shown}{more}\": {reason}")
}

/// A lazy DFA of `hir`, forward (leftmost-first) or reverse (all matches,
/// anchored), that never gives up: its searches are stepped here.
fn lazy_dfa(hir: &regex_syntax::hir::Hir, reverse: bool) -> Result<DFA, String> {
    let nfa = thompson::Compiler::new()
        .configure(
            thompson::Config::new()
                .nfa_size_limit(Some(NFA_SIZE_LIMIT))
                .which_captures(WhichCaptures::None)
                .reverse(reverse),
        )
        .build_from_hir(hir)
        .map_err(|error| match error.size_limit() {
            Some(limit) => format!("{TOO_BIG}: its compiled form exceeds {limit} bytes"),
            None => error.to_string(),
        })?;
    let kind = if reverse {
        MatchKind::All
    } else {
        MatchKind::LeftmostFirst
    };
    DFA::builder()
        .configure(
            DFA::config()
                .match_kind(kind)
                .cache_capacity(LAZY_DFA_CAPACITY)
                .skip_cache_capacity_check(true)
                .minimum_cache_clear_count(None)
                .unicode_word_boundary(true),
        )
        .build_from_nfa(nfa)
        .map_err(|error| error.to_string())
}

/// A lazy DFA could not go on (a Unicode word boundary next to a non-ASCII
/// byte): the engine's own search does the rest.
struct Unsupported;

impl Compiled {
    /// Compile `pattern`; the error is the whole message.
    pub fn new(pattern: &[u8], options: Syntax) -> Result<Compiled, String> {
        let translated = translate(pattern, options).map_err(|e| compile_error(pattern, &e))?;
        let syntax = syntax::Config::new()
            .unicode(options.utf8)
            .utf8(false)
            .case_insensitive(options.caseless)
            .multi_line(options.multiline)
            .dot_matches_new_line(options.dotall)
            .nest_limit(u32::try_from(MAX_NESTING * 3).unwrap_or(u32::MAX));
        let hir = syntax::parse_with(&translated.pattern, &syntax).map_err(|error| {
            let text = error.to_string();
            let reason = match text.rfind("error: ") {
                Some(at) => text[at + 7..].trim().to_string(),
                None => text,
            };
            compile_error(pattern, &reason)
        })?;
        let config = meta::Config::new()
            .nfa_size_limit(Some(NFA_SIZE_LIMIT))
            .hybrid_cache_capacity(LAZY_DFA_CAPACITY)
            .utf8_empty(false);
        let regex = meta::Regex::builder()
            .configure(config)
            .build_from_hir(&hir)
            .map_err(|error| {
                let reason = if let Some(limit) = error.size_limit() {
                    format!("{TOO_BIG}: its compiled form exceeds {limit} bytes")
                } else {
                    error.to_string()
                };
                compile_error(pattern, &reason)
            })?;
        let groups = regex.group_info().group_len(PatternID::ZERO);
        if groups != translated.groups as usize + 1 {
            return Err(compile_error(
                pattern,
                "internal error: the translated pattern has other groups",
            ));
        }
        let forward = lazy_dfa(&hir, false).map_err(|e| compile_error(pattern, &e))?;
        let reverse = lazy_dfa(&hir, true).map_err(|e| compile_error(pattern, &e))?;
        let states = forward.get_nfa().states().len() as u64;
        let weight = regex.memory_usage()
            + forward.memory_usage()
            + reverse.memory_usage()
            + KEPT_SCRATCH_BYTES
            + pattern.len();
        Ok(Compiled {
            regex,
            forward,
            reverse,
            groups: translated.groups,
            names: translated.names,
            utf8: options.utf8,
            anchored: translated.anchored,
            scratch: Mutex::new(None),
            weight,
            states,
        })
    }

    fn take_scratch(&self) -> Scratch {
        lock(&self.scratch).take().unwrap_or_else(|| Scratch {
            regex: self.regex.create_cache(),
            forward: self.forward.create_cache(),
            reverse: self.reverse.create_cache(),
        })
    }

    fn keep_scratch(&self, scratch: Scratch) {
        if scratch.memory_usage() <= KEPT_SCRATCH_BYTES {
            *lock(&self.scratch) = Some(scratch);
        }
    }

    /// Up to `max_matches` successive matches from `start`, each with its
    /// first `want_groups` groups, metered by `meter`.
    pub fn scan(
        &self,
        subject: &[u8],
        start: u32,
        want_groups: u32,
        max_matches: u32,
        anchored: bool,
        mut meter: Meter<'_>,
    ) -> Result<(u32, Vec<u32>, Option<u32>), ScanError> {
        let len = subject.len();
        if u32::try_from(len).map_or(true, |len| len == NO_OFFSET) {
            return Err(ScanError::Refused("the subject is too long".into()));
        }
        let stride = want_groups.clamp(1, self.groups + 1) as usize;
        let per_match = 2 * stride;
        let max = (max_matches as usize).min(MAX_OFFSETS / per_match).max(1);
        let anchored = if anchored || self.anchored {
            Anchored::Yes
        } else {
            Anchored::No
        };
        let mut scratch = self.take_scratch();
        let mut stepper = Stepper::new(&mut meter);
        let mut slots: Vec<Option<NonMaxUsize>> = vec![None; per_match];
        let mut offsets = Vec::with_capacity(per_match * max.min(64));
        let mut pos = start as usize;
        let mut found = 0;
        let mut next = None;
        let result = loop {
            if pos > len {
                break Ok(());
            }
            if found == max {
                next = Some(pos as u32);
                break Ok(());
            }
            let input = Input::new(subject).span(pos..len).anchored(anchored);
            match self.find(&mut scratch, &input, &mut slots, &mut stepper) {
                Ok(true) => {}
                Ok(false) => break Ok(()),
                Err(error) => break Err(error),
            }
            let (Some(from), Some(to)) = (slots[0], slots[1]) else {
                break Ok(());
            };
            let (from, to) = (from.get(), to.get());
            for slot in &slots {
                offsets.push(slot.map_or(NO_OFFSET, |s| s.get() as u32));
            }
            found += 1;
            pos = if to == from {
                to + char_len(subject, to, self.utf8)
            } else {
                to
            };
        };
        self.keep_scratch(scratch);
        let settled = stepper.settle();
        result?;
        settled?;
        Ok((stride as u32, offsets, next))
    }

    /// The leftmost-first match in `input`, its groups in `slots`: where it
    /// ends (stepping forward), where it starts (stepping back), then the
    /// groups within it. `Ok(false)`: no match.
    fn find(
        &self,
        scratch: &mut Scratch,
        input: &Input<'_>,
        slots: &mut [Option<NonMaxUsize>],
        stepper: &mut Stepper<'_, '_>,
    ) -> Result<bool, ScanError> {
        let Ok(bounds) = self.bounds(scratch, input, stepper) else {
            // The engine's own search, in one step.
            stepper.engine(input.end() - input.start(), self.states)?;
            let found = self
                .regex
                .search_slots_with(&mut scratch.regex, input, slots)
                .is_some();
            return Ok(found);
        };
        let Some((from, to)) = bounds? else {
            return Ok(false);
        };
        if slots.len() == 2 {
            slots[0] = NonMaxUsize::new(from);
            slots[1] = NonMaxUsize::new(to);
            return Ok(true);
        }
        let within = input.clone().span(from..to).anchored(Anchored::Yes);
        stepper.engine(to - from, self.states)?;
        let found = self
            .regex
            .search_slots_with(&mut scratch.regex, &within, slots)
            .is_some();
        Ok(found)
    }

    /// Where the leftmost-first match in `input` starts and ends, by the
    /// lazy DFAs, stepped; `Err(Unsupported)` if they cannot tell.
    #[allow(clippy::type_complexity)]
    fn bounds(
        &self,
        scratch: &mut Scratch,
        input: &Input<'_>,
        stepper: &mut Stepper<'_, '_>,
    ) -> Result<Result<Option<(usize, usize)>, ScanError>, Unsupported> {
        let to = match self.forward_end(&mut scratch.forward, input, stepper)? {
            Ok(Some(to)) => to,
            Ok(None) => return Ok(Ok(None)),
            Err(error) => return Ok(Err(error)),
        };
        let back = input
            .clone()
            .span(input.start()..to)
            .anchored(Anchored::Yes);
        match self.reverse_start(&mut scratch.reverse, &back, stepper)? {
            Ok(Some(from)) => Ok(Ok(Some((from, to)))),
            // The forward DFA saw a match the reverse one does not: let
            // the engine decide.
            Ok(None) => Err(Unsupported),
            Err(error) => Ok(Err(error)),
        }
    }

    /// Where the leftmost-first match in `input` ends.
    #[allow(clippy::type_complexity)]
    fn forward_end(
        &self,
        cache: &mut DfaCache,
        input: &Input<'_>,
        stepper: &mut Stepper<'_, '_>,
    ) -> Result<Result<Option<usize>, ScanError>, Unsupported> {
        let dfa = &self.forward;
        let subject = input.haystack();
        let mut built = Built::of(cache);
        let mut sid = dfa
            .start_state_forward(cache, input)
            .map_err(|_| Unsupported)?;
        let mut last = None;
        let mut at = input.start();
        while at < input.end() {
            let stop = (at + STEP_BYTES).min(input.end());
            let from = at;
            while at < stop {
                sid = dfa
                    .next_state(cache, sid, subject[at])
                    .map_err(|_| Unsupported)?;
                if sid.is_tagged() {
                    if sid.is_match() {
                        last = Some(at);
                    } else if sid.is_dead() {
                        return Ok(stepper.step(at - from, built.since(cache)).map(|()| last));
                    } else if sid.is_quit() {
                        return Err(Unsupported);
                    }
                }
                at += 1;
            }
            if let Err(error) = stepper.step(at - from, built.since(cache)) {
                return Ok(Err(error));
            }
        }
        sid = past_end(dfa, cache, sid, subject, input.end())?;
        if sid.is_match() {
            last = Some(input.end());
        }
        Ok(stepper.step(0, built.since(cache)).map(|()| last))
    }

    /// Where the longest match ending at `input.end()` starts (at or after
    /// `input.start()`).
    #[allow(clippy::type_complexity)]
    fn reverse_start(
        &self,
        cache: &mut DfaCache,
        input: &Input<'_>,
        stepper: &mut Stepper<'_, '_>,
    ) -> Result<Result<Option<usize>, ScanError>, Unsupported> {
        let dfa = &self.reverse;
        let subject = input.haystack();
        let mut built = Built::of(cache);
        let mut sid = dfa
            .start_state_reverse(cache, input)
            .map_err(|_| Unsupported)?;
        let mut last = None;
        let mut at = input.end();
        while at > input.start() {
            let stop = at.saturating_sub(STEP_BYTES).max(input.start());
            let from = at;
            while at > stop {
                sid = dfa
                    .next_state(cache, sid, subject[at - 1])
                    .map_err(|_| Unsupported)?;
                if sid.is_tagged() {
                    if sid.is_match() {
                        last = Some(at);
                    } else if sid.is_dead() {
                        return Ok(stepper.step(from - at, built.since(cache)).map(|()| last));
                    } else if sid.is_quit() {
                        return Err(Unsupported);
                    }
                }
                at -= 1;
            }
            if let Err(error) = stepper.step(from - at, built.since(cache)) {
                return Ok(Err(error));
            }
        }
        sid = if input.start() > 0 {
            dfa.next_state(cache, sid, subject[input.start() - 1])
                .map_err(|_| Unsupported)?
        } else {
            dfa.next_eoi_state(cache, sid).map_err(|_| Unsupported)?
        };
        if sid.is_quit() {
            return Err(Unsupported);
        }
        if sid.is_match() {
            last = Some(input.start());
        }
        Ok(stepper.step(0, built.since(cache)).map(|()| last))
    }
}

/// The forward DFA's state after the end of the span: the next byte of the
/// subject, or its end.
fn past_end(
    dfa: &DFA,
    cache: &mut DfaCache,
    sid: LazyStateID,
    subject: &[u8],
    end: usize,
) -> Result<LazyStateID, Unsupported> {
    let sid = match subject.get(end) {
        Some(&byte) => dfa.next_state(cache, sid, byte),
        None => dfa.next_eoi_state(cache, sid),
    }
    .map_err(|_| Unsupported)?;
    if sid.is_quit() {
        return Err(Unsupported);
    }
    Ok(sid)
}

/// The length of the character at `at` (1 past the end, for a byte, or
/// for what is not a valid UTF-8 character).
fn char_len(subject: &[u8], at: usize, utf8: bool) -> usize {
    let Some(&lead) = subject.get(at) else {
        return 1;
    };
    if !utf8 || lead < 0xC0 {
        return 1;
    }
    let want = match lead {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    };
    let end = (at + want).min(subject.len());
    match std::str::from_utf8(&subject[at..end]) {
        Ok(_) if end - at == want => want,
        _ => 1,
    }
}

struct Entry {
    compiled: Arc<Compiled>,
    used: u64,
}

/// One tenant's compiled patterns, by options and pattern.
#[derive(Default)]
struct Partition {
    entries: HashMap<(u8, Vec<u8>), Entry>,
    tick: u64,
    pattern_bytes: usize,
    memory: usize,
}

impl Partition {
    fn over_bounds(&self) -> bool {
        self.entries.len() > CACHE_MAX_ENTRIES
            || self.pattern_bytes > CACHE_MAX_PATTERN_BYTES
            || self.memory > CACHE_MAX_MEMORY
    }

    /// Drop the least recently used entry; its memory.
    fn evict_oldest(&mut self) -> usize {
        let oldest = self
            .entries
            .iter()
            .min_by_key(|(_, entry)| entry.used)
            .map(|(key, _)| key.clone());
        let Some(key) = oldest else {
            return 0;
        };
        let Some(entry) = self.entries.remove(&key) else {
            return 0;
        };
        self.pattern_bytes -= key.1.len();
        self.memory -= entry.compiled.weight;
        entry.compiled.weight
    }
}

/// The cache of compiled patterns: a partition per tenant.
#[derive(Default)]
pub struct Cache {
    tenants: HashMap<String, Partition>,
    memory: usize,
}

static CACHE: LazyLock<Mutex<Cache>> = LazyLock::new(|| Mutex::new(Cache::default()));

impl Cache {
    /// The compiled `pattern` of `tenant` (cached in its partition, or
    /// compiled and cached there now). A compile is paid for by its
    /// pattern's bytes and what it compiled to ([`rates`]).
    pub fn get(
        tenant: &str,
        pattern: Vec<u8>,
        options: Syntax,
        mut meter: Meter<'_>,
    ) -> Result<Arc<Compiled>, ScanError> {
        let key = (options.key_byte(), pattern);
        {
            let mut cache = lock(&CACHE);
            if let Some(partition) = cache.tenants.get_mut(tenant) {
                partition.tick += 1;
                let tick = partition.tick;
                if let Some(entry) = partition.entries.get_mut(&key) {
                    entry.used = tick;
                    return Ok(entry.compiled.clone());
                }
            }
        }
        if let Some(work) = meter.as_deref_mut() {
            work.check_deadline().map_err(ScanError::Stopped)?;
        }
        // Compile outside the lock: other runs go on meanwhile.
        let compiled = Compiled::new(&key.1, options);
        if let Some(work) = meter {
            let fuel = match &compiled {
                Ok(compiled) => compile_fuel(key.1.len(), Some(compiled)),
                // Refused for its size: it was built up to the limit first.
                Err(error) if error.contains(TOO_BIG) => compile_fuel(key.1.len(), None),
                Err(_) => HostWork::cost(key.1.len(), rates::PATTERN_BYTE),
            };
            work.charge(fuel).map_err(ScanError::Stopped)?;
        }
        let compiled = Arc::new(compiled.map_err(ScanError::Refused)?);
        lock(&CACHE).insert(tenant, key, compiled.clone());
        Ok(compiled)
    }

    fn insert(&mut self, tenant: &str, key: (u8, Vec<u8>), compiled: Arc<Compiled>) {
        let partition = self.tenants.entry(tenant.to_string()).or_default();
        partition.tick += 1;
        let (bytes, weight) = (key.1.len(), compiled.weight);
        let entry = Entry {
            compiled,
            used: partition.tick,
        };
        match partition.entries.insert(key, entry) {
            // Compiled meanwhile by another run: replaced.
            Some(old) => {
                partition.memory -= old.compiled.weight;
                self.memory -= old.compiled.weight;
            }
            None => partition.pattern_bytes += bytes,
        }
        partition.memory += weight;
        self.memory += weight;
        // The tenant's own bounds: only its own patterns go.
        while partition.entries.len() > 1 && partition.over_bounds() {
            self.memory -= partition.evict_oldest();
        }
        // The process-wide bound: the biggest partition gives way.
        while self.memory > CACHE_MAX_TOTAL_MEMORY {
            let biggest = self
                .tenants
                .iter()
                .filter(|(_, partition)| partition.entries.len() > 1)
                .max_by_key(|(_, partition)| partition.memory)
                .map(|(name, _)| name.clone());
            let Some(partition) = biggest.and_then(|name| self.tenants.get_mut(&name)) else {
                break;
            };
            self.memory -= partition.evict_oldest();
        }
        self.tenants
            .retain(|_, partition| !partition.entries.is_empty());
    }

    /// How many patterns `tenant` has cached, their bytes, their memory.
    pub fn stats(tenant: &str) -> (usize, usize, usize) {
        let cache = lock(&CACHE);
        cache.tenants.get(tenant).map_or((0, 0, 0), |partition| {
            (
                partition.entries.len(),
                partition.pattern_bytes,
                partition.memory,
            )
        })
    }

    /// Whether `tenant`'s partition holds `pattern` (with `options`).
    pub fn holds(tenant: &str, pattern: &[u8], options: Syntax) -> bool {
        let cache = lock(&CACHE);
        cache.tenants.get(tenant).is_some_and(|partition| {
            partition
                .entries
                .contains_key(&(options.key_byte(), pattern.to_vec()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(p: &str, s: &str, syntax: Syntax) -> Vec<(u32, u32)> {
        let compiled = Compiled::new(p.as_bytes(), syntax).unwrap();
        let (stride, offsets, _) = compiled.scan(s.as_bytes(), 0, 1, 100, false, None).unwrap();
        assert_eq!(stride, 1);
        offsets.chunks(2).map(|c| (c[0], c[1])).collect()
    }

    #[test]
    fn pathological_patterns_are_linear() {
        let subject = "a".repeat(100_000);
        assert!(find("(a*)*b", &subject, Syntax::default()).is_empty());
        let subject = "x".repeat(100_000);
        assert!(find("(x+x+)+y", &subject, Syntax::default()).is_empty());
    }

    #[test]
    fn empty_matches_advance_one_character() {
        let utf8 = Syntax {
            utf8: true,
            ..Syntax::default()
        };
        assert_eq!(find("", "\u{e9}a", utf8), vec![(0, 0), (2, 2), (3, 3)]);
        assert_eq!(
            find("", "\u{e9}", Syntax::default()),
            vec![(0, 0), (1, 1), (2, 2)]
        );
        assert_eq!(
            find("a*", "baa", Syntax::default()),
            vec![(0, 0), (1, 3), (3, 3)]
        );
    }

    /// The matches of the engine's own searches, one call each (how `scan`
    /// searched before it stepped the lazy DFAs itself).
    fn engine_scan(compiled: &Compiled, subject: &[u8], anchored: bool) -> Vec<u32> {
        let anchored = if anchored || compiled.anchored {
            Anchored::Yes
        } else {
            Anchored::No
        };
        let mut cache = compiled.regex.create_cache();
        let mut slots = vec![None; 2 * (compiled.groups as usize + 1)];
        let mut offsets = Vec::new();
        let mut pos = 0;
        while pos <= subject.len() && offsets.len() < 100 * slots.len() {
            let input = Input::new(subject)
                .span(pos..subject.len())
                .anchored(anchored);
            if compiled
                .regex
                .search_slots_with(&mut cache, &input, &mut slots)
                .is_none()
            {
                break;
            }
            let (from, to) = (slots[0].unwrap().get(), slots[1].unwrap().get());
            offsets.extend(
                slots
                    .iter()
                    .map(|s| s.map_or(NO_OFFSET, |s| s.get() as u32)),
            );
            pos = if to == from {
                to + char_len(subject, to, compiled.utf8)
            } else {
                to
            };
        }
        offsets
    }

    /// Random patterns and options: the translator and the engine never
    /// panic, they always agree on the groups, and the stepped search finds
    /// what the engine's own finds.
    #[test]
    fn random_patterns_never_panic() {
        const TOKENS: &[&str] = &[
            "(", ")", "[", "]", "{", "}", "\\", "^", "$", ".", "*", "+", "?", "|", "-", ":", "<",
            ">", "=", "!", "'", "P", "#", " ", "\n", "x", "u", "d", "w", "s", "b", "0", "1", "9",
            ",", "a", "A", "\u{e9}", "&", "~", "(?", "(?<", "[:", ":]", "\\Q", "\\E", "\\x", "\\p",
            "{2,3}", "(?i)", "(?x)", "(?-x:", "\\c", "\\o{",
        ];
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let subjects: [&[u8]; 4] = [
            b"",
            b"abc a-1 x\n{2}",
            "\u{e9}t\u{e9}".as_bytes(),
            b"\xff\x00a",
        ];
        for _ in 0..20_000 {
            let len = (next() % 12) as usize;
            let mut pattern = Vec::new();
            for _ in 0..len {
                pattern
                    .extend_from_slice(TOKENS[(next() % TOKENS.len() as u64) as usize].as_bytes());
            }
            if next() % 8 == 0 {
                pattern.push(0xFF);
            }
            let bits = next();
            let syntax = Syntax {
                caseless: bits & 1 != 0,
                multiline: bits & 2 != 0,
                dotall: bits & 4 != 0,
                extended: bits & 8 != 0,
                utf8: bits & 16 != 0,
                dupnames: bits & 32 != 0,
            };
            match Compiled::new(&pattern, syntax) {
                Ok(compiled) => {
                    for subject in subjects {
                        let anchored = bits & 64 != 0;
                        let stepped = compiled.scan(subject, 0, u32::MAX, 100, anchored, None);
                        let (_, offsets, _) = stepped.unwrap();
                        assert_eq!(
                            offsets,
                            engine_scan(&compiled, subject, anchored),
                            "{:?} on {subject:?}",
                            String::from_utf8_lossy(&pattern)
                        );
                    }
                }
                Err(error) => assert!(
                    !error.contains("internal error"),
                    "{:?}: {error}",
                    String::from_utf8_lossy(&pattern)
                ),
            }
        }
    }

    #[test]
    fn the_cache_stays_within_bounds() {
        let tenant = "bound-test";
        for n in 0..(CACHE_MAX_ENTRIES + 50) {
            let pattern = format!("bound-test-{n}").into_bytes();
            Cache::get(tenant, pattern, Syntax::default(), None).unwrap();
        }
        let (entries, bytes, memory) = Cache::stats(tenant);
        assert!(entries <= CACHE_MAX_ENTRIES);
        assert!(bytes <= CACHE_MAX_PATTERN_BYTES);
        assert!(memory <= CACHE_MAX_MEMORY);
    }

    /// Pseudo-random lowercase letters (the same every time).
    fn letters(len: usize) -> Vec<u8> {
        let mut seed: u64 = 7;
        (0..len)
            .map(|_| {
                seed = (seed * 1_103_515_245 + 12_345) % 2_147_483_648;
                b'a' + ((seed / 65_536) % 26) as u8
            })
            .collect()
    }

    /// The fuel a scan of `subject` by a freshly compiled `pattern` charges
    /// (with `groups`, its groups are collected too).
    fn scan_fuel(pattern: &str, subject: &[u8], groups: bool) -> u64 {
        let compiled = Compiled::new(pattern.as_bytes(), Syntax::default()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
        let mut work = HostWork::armed(u64::MAX, deadline);
        let want = if groups { u32::MAX } else { 0 };
        compiled
            .scan(subject, 0, want, u32::MAX, false, Some(&mut work))
            .unwrap();
        work.charged()
    }

    /// A search costs the same fuel every time it does the same work, on a
    /// busy host as on an idle one: it is counted in bytes stepped, states
    /// built and bytes the engine went through, not in time. (It was charged
    /// by the thread's CPU time: never the same twice, and more on a loaded
    /// machine.)
    #[test]
    fn a_search_costs_the_same_fuel_every_time() {
        let subject = letters(256 << 10);
        for (pattern, groups) in [
            ("[a-m][a-z]{20}[n-z]{5}", false),
            ("(q)([a-z]{3})", true),
            ("zzzzzz", false),
        ] {
            let first = scan_fuel(pattern, &subject, groups);
            for _ in 0..3 {
                assert_eq!(scan_fuel(pattern, &subject, groups), first, "{pattern}");
            }
            // Every byte of the subject was stepped through at least once.
            assert!(
                first >= HostWork::cost(subject.len(), rates::STEP),
                "{pattern}: {first}"
            );
        }
    }

    /// What a search costs grows with the states its DFA must build: a
    /// pattern whose DFA has few states costs about its bytes stepped, one
    /// that keeps building new states (and clearing its cache) costs many
    /// times more on the same subject.
    #[test]
    fn building_states_is_paid_for() {
        let subject = letters(64 << 10);
        let cheap = scan_fuel("zzzzzz", &subject, false);
        let stepped = HostWork::cost(subject.len(), rates::STEP);
        assert!(cheap < stepped * 2, "{cheap} for {stepped} stepped");
        let costly = scan_fuel("[a-m][a-z]{1000}[n-z]{30}", &subject, false);
        assert!(costly > cheap * 20, "{costly} vs {cheap}");
    }

    /// Groups are collected by the engine's own search, within each match,
    /// at its rate per byte and per state of the automaton.
    #[test]
    fn collecting_groups_is_paid_for() {
        let subject = b"ab".repeat(32 << 10);
        let bounds = scan_fuel("(?:a|b)+", &subject, true);
        let groups = scan_fuel("((?:a|b)+)", &subject, true);
        let engine = HostWork::cost(subject.len(), rates::ENGINE_BYTE);
        assert!(groups >= bounds + engine, "{groups} vs {bounds} + {engine}");
    }

    /// A compile costs its pattern's bytes and what it compiled to; one
    /// refused for its size costs as much as a compile may build.
    #[test]
    fn compiles_are_paid_for() {
        let small = Compiled::new(b"a", Syntax::default()).unwrap();
        let big = Compiled::new(b"[a-z]{2000}", Syntax::default()).unwrap();
        assert!(compile_fuel(1, Some(&small)) >= rates::PATTERN_BYTE);
        assert!(compile_fuel(11, Some(&big)) > 100 * compile_fuel(1, Some(&small)));
        let refused = Compiled::new(b"(?:[a-z]{1000}){100}", Syntax::default());
        let error = refused.err().unwrap();
        assert!(error.contains(TOO_BIG), "{error}");
        assert!(compile_fuel(8, None) > compile_fuel(11, Some(&big)));
    }

    /// A tenant that compiles more patterns than its partition holds evicts
    /// only its own: another tenant's pattern stays cached, and a pattern is
    /// never shared between tenants.
    #[test]
    fn tenants_do_not_evict_or_share_each_others_patterns() {
        let syntax = Syntax::default();
        let kept = b"victim-(pattern)+".to_vec();
        let victim = Cache::get("partition-victim", kept.clone(), syntax, None).unwrap();
        assert!(Cache::holds("partition-victim", &kept, syntax));
        // The same pattern for another tenant is a compile of its own.
        let other = Cache::get("partition-hostile", kept.clone(), syntax, None).unwrap();
        assert!(!Arc::ptr_eq(&victim, &other));
        for n in 0..(CACHE_MAX_ENTRIES * 2) {
            let pattern = format!("flood-{n}-[a-z]+").into_bytes();
            Cache::get("partition-hostile", pattern, syntax, None).unwrap();
        }
        assert!(!Cache::holds("partition-hostile", &kept, syntax));
        assert!(Cache::holds("partition-victim", &kept, syntax));
        let again = Cache::get("partition-victim", kept, syntax, None).unwrap();
        assert!(Arc::ptr_eq(&victim, &again));
    }

    /// The stepped search finds what the engine's own search finds.
    #[test]
    fn stepped_search_agrees_with_the_engine() {
        let cases: &[(&str, &str)] = &[
            ("abcdef|c", "xxabcdef"),
            (r"a+", "baaab aa"),
            (r"(a)(b)?", "ab a"),
            (r"\bfoo\b", "foo xfoo foo"),
            (r"^x|y$", "xay\nx"),
            (r"(?m)^\w+$", "ab\ncd\n"),
            (r"", "ab"),
            (r"[a-z]{3}\d", "ab1abc2xyz"),
        ];
        for (pattern, subject) in cases {
            let compiled = Compiled::new(pattern.as_bytes(), Syntax::default()).unwrap();
            let (stride, offsets, _) = compiled
                .scan(subject.as_bytes(), 0, u32::MAX, 100, false, None)
                .unwrap();
            let regex = regex_automata::meta::Regex::new(
                &translate(pattern.as_bytes(), Syntax::default())
                    .unwrap()
                    .pattern,
            )
            .unwrap();
            let mut expected = Vec::new();
            for captures in regex.captures_iter(subject.as_bytes()) {
                for group in 0..stride as usize {
                    match captures.get_group(group) {
                        Some(span) => expected.extend([span.start as u32, span.end as u32]),
                        None => expected.extend([NO_OFFSET, NO_OFFSET]),
                    }
                }
            }
            assert_eq!(offsets, expected, "{pattern:?} in {subject:?}");
        }
    }
}
