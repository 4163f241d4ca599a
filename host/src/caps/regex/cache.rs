//! Compiled patterns ([`Compiled`], each with its search, [`Compiled::scan`])
//! and the process-wide [`Cache`] of them, bounded in entries, pattern bytes
//! and memory, least recently used out first.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::Instant;

use regex_automata::util::primitives::NonMaxUsize;
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input, PatternID, meta};

use super::Syntax;
use super::pcre::{MAX_NESTING, translate};

/// Most heap one compiled pattern's automaton may take.
pub const NFA_SIZE_LIMIT: usize = 2 << 20;
/// Most memory the lazy DFA of one search may use for its states (past it,
/// the engine clears it, or falls back to a slower linear engine).
const LAZY_DFA_CAPACITY: usize = 1 << 20;
/// A search's scratch memory is kept with its pattern for the next search
/// only when it is at most this big.
const KEPT_SCRATCH_BYTES: usize = 256 << 10;
/// Most patterns the process-wide cache keeps.
pub const CACHE_MAX_ENTRIES: usize = 512;
/// Most pattern bytes the cache keeps (all entries together).
pub const CACHE_MAX_PATTERN_BYTES: usize = 1 << 20;
/// Most memory the cache's compiled patterns take (all entries together,
/// counting each one's kept scratch memory at its bound).
pub const CACHE_MAX_MEMORY: usize = 128 << 20;
/// Most offsets (two per group per match) one `scan` returns.
pub const MAX_OFFSETS: usize = 64 * 1024;
/// The offset of a group that did not take part in a match.
pub const NO_OFFSET: u32 = u32::MAX;

/// A compiled pattern, shared by every run that uses it.
pub struct Compiled {
    regex: meta::Regex,
    /// Capture groups, not counting group 0.
    pub groups: u32,
    pub names: Vec<(String, u32)>,
    utf8: bool,
    /// `\G` at the start: every search is anchored.
    anchored: bool,
    /// Scratch memory for one search, kept for the next one.
    scratch: Mutex<Option<meta::Cache>>,
    /// What this entry counts for against [`CACHE_MAX_MEMORY`].
    weight: usize,
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
        let config = meta::Config::new()
            .nfa_size_limit(Some(NFA_SIZE_LIMIT))
            .hybrid_cache_capacity(LAZY_DFA_CAPACITY)
            .utf8_empty(false);
        let regex = meta::Regex::builder()
            .syntax(syntax)
            .configure(config)
            .build(&translated.pattern)
            .map_err(|error| {
                let reason = if let Some(limit) = error.size_limit() {
                    format!("pattern too big: its compiled form exceeds {limit} bytes")
                } else if let Some(syntax) = error.syntax_error() {
                    let text = syntax.to_string();
                    match text.rfind("error: ") {
                        Some(at) => text[at + 7..].trim().to_string(),
                        None => text,
                    }
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
        let weight = regex.memory_usage() + KEPT_SCRATCH_BYTES + pattern.len();
        Ok(Compiled {
            regex,
            groups: translated.groups,
            names: translated.names,
            utf8: options.utf8,
            anchored: translated.anchored,
            scratch: Mutex::new(None),
            weight,
        })
    }

    fn take_scratch(&self) -> meta::Cache {
        lock(&self.scratch)
            .take()
            .unwrap_or_else(|| self.regex.create_cache())
    }

    fn keep_scratch(&self, scratch: meta::Cache) {
        if scratch.memory_usage() <= KEPT_SCRATCH_BYTES {
            *lock(&self.scratch) = Some(scratch);
        }
    }

    /// Up to `max_matches` successive matches from `start`, each with its
    /// first `want_groups` groups; stops at `deadline` (`Err(None)`).
    pub fn scan(
        &self,
        subject: &[u8],
        start: u32,
        want_groups: u32,
        max_matches: u32,
        anchored: bool,
        deadline: Option<Instant>,
    ) -> Result<(u32, Vec<u32>, Option<u32>), Option<String>> {
        let len = subject.len();
        if u32::try_from(len).map_or(true, |len| len == NO_OFFSET) {
            return Err(Some("the subject is too long".into()));
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
        let mut slots: Vec<Option<NonMaxUsize>> = vec![None; per_match];
        let mut offsets = Vec::with_capacity(per_match * max.min(64));
        let mut pos = start as usize;
        let mut found = 0;
        let mut next = None;
        while pos <= len {
            if found == max {
                next = Some(pos as u32);
                break;
            }
            if found % 64 == 63 && deadline.is_some_and(|d| Instant::now() >= d) {
                self.keep_scratch(scratch);
                return Err(None);
            }
            let input = Input::new(subject).span(pos..len).anchored(anchored);
            if self
                .regex
                .search_slots_with(&mut scratch, &input, &mut slots)
                .is_none()
            {
                break;
            }
            let (Some(from), Some(to)) = (slots[0], slots[1]) else {
                break;
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
        }
        self.keep_scratch(scratch);
        Ok((stride as u32, offsets, next))
    }
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

/// The process-wide cache of compiled patterns, by options and pattern.
#[derive(Default)]
pub struct Cache {
    /// By [`Syntax::key_byte`], then by pattern.
    by_syntax: HashMap<u8, HashMap<Vec<u8>, Entry>>,
    entries: usize,
    tick: u64,
    pattern_bytes: usize,
    memory: usize,
}

static CACHE: LazyLock<Mutex<Cache>> = LazyLock::new(|| Mutex::new(Cache::default()));

impl Cache {
    /// The compiled `pattern` (cached, or compiled and cached now).
    pub fn get(pattern: Vec<u8>, options: Syntax) -> Result<Arc<Compiled>, String> {
        let syntax = options.key_byte();
        {
            let mut cache = lock(&CACHE);
            cache.tick += 1;
            let tick = cache.tick;
            let entry = cache
                .by_syntax
                .get_mut(&syntax)
                .and_then(|patterns| patterns.get_mut(pattern.as_slice()));
            if let Some(entry) = entry {
                entry.used = tick;
                return Ok(entry.compiled.clone());
            }
        }
        // Compile outside the lock: other runs go on meanwhile.
        let compiled = Arc::new(Compiled::new(&pattern, options)?);
        lock(&CACHE).insert(syntax, pattern, compiled.clone());
        Ok(compiled)
    }

    fn insert(&mut self, syntax: u8, pattern: Vec<u8>, compiled: Arc<Compiled>) {
        self.tick += 1;
        let (bytes, weight) = (pattern.len(), compiled.weight);
        let entry = Entry {
            compiled,
            used: self.tick,
        };
        match self
            .by_syntax
            .entry(syntax)
            .or_default()
            .insert(pattern, entry)
        {
            // Compiled meanwhile by another run: replaced.
            Some(old) => self.memory -= old.compiled.weight,
            None => {
                self.entries += 1;
                self.pattern_bytes += bytes;
            }
        }
        self.memory += weight;
        while self.entries > 1
            && (self.entries > CACHE_MAX_ENTRIES
                || self.pattern_bytes > CACHE_MAX_PATTERN_BYTES
                || self.memory > CACHE_MAX_MEMORY)
        {
            let oldest = self
                .by_syntax
                .iter()
                .flat_map(|(syntax, patterns)| {
                    patterns
                        .iter()
                        .map(move |(pattern, entry)| (entry.used, *syntax, pattern))
                })
                .min_by_key(|(used, _, _)| *used)
                .map(|(_, syntax, pattern)| (syntax, pattern.clone()));
            let Some((syntax, pattern)) = oldest else {
                break;
            };
            let Some(patterns) = self.by_syntax.get_mut(&syntax) else {
                break;
            };
            if let Some(entry) = patterns.remove(&pattern) {
                self.entries -= 1;
                self.pattern_bytes -= pattern.len();
                self.memory -= entry.compiled.weight;
            }
            if patterns.is_empty() {
                self.by_syntax.remove(&syntax);
            }
        }
    }

    /// How many patterns are cached, their bytes, their memory.
    pub fn stats() -> (usize, usize, usize) {
        let cache = lock(&CACHE);
        (cache.entries, cache.pattern_bytes, cache.memory)
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

    /// Random patterns and options: the translator and the engine never
    /// panic, and they always agree on the groups.
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
                        let _ = compiled.scan(subject, 0, u32::MAX, 100, bits & 64 != 0, None);
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
        for n in 0..(CACHE_MAX_ENTRIES + 50) {
            Cache::get(format!("bound-test-{n}").into_bytes(), Syntax::default()).unwrap();
        }
        let (entries, bytes, memory) = Cache::stats();
        assert!(entries <= CACHE_MAX_ENTRIES);
        assert!(bytes <= CACHE_MAX_PATTERN_BYTES);
        assert!(memory <= CACHE_MAX_MEMORY);
    }
}
