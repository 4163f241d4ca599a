//! `ngx.re`: regular expressions on a linear-time engine (`regex-automata`,
//! the engine of the `regex` crate).
//!
//! Patterns arrive in PCRE syntax, as OpenResty takes them.
//! [`pcre::translate`] rewrites them for the engine, and refuses, naming the
//! feature, what a linear-time engine cannot do (backreferences, look-around,
//! atomic groups, possessive quantifiers, recursion, `\K`, ...). No pattern
//! can then take more than linear time in its subject.
//!
//! Regular expressions are computation: every tenant has them, nothing is
//! granted. The hostile cases are bounded here, on the host:
//! - a pattern is at most [`pcre::MAX_PATTERN_BYTES`], nests at most
//!   [`pcre::MAX_NESTING`] groups deep, and compiles to at most
//!   [`cache::NFA_SIZE_LIMIT`] (so `a{60000}{60000}` is refused as too big);
//! - compiled patterns live in a cache partitioned by tenant, each
//!   partition bounded in entries, pattern bytes and memory, least recently
//!   used out first (and all of them together in memory): a tenant cannot
//!   evict another's patterns, nor time its hits;
//! - compiles and searches are paid for with the run's fuel, counted in
//!   the work they do ([`cache::rates`]), and searches check the run's
//!   deadline every [`cache::STEP_BYTES`] of the subject ([`cache`]);
//! - one `scan` returns at most [`cache::MAX_OFFSETS`] offsets; the strings
//!   (captures, `gsub`'s result) are built by the guest, in its own capped
//!   memory.
//!
//! The files:
//! - this one: the grant, the per-run state, the options a pattern compiles
//!   with ([`Syntax`]) and the WIT functions;
//! - [`pcre`]: the translator from PCRE syntax to the engine's;
//! - [`cache`]: compiled patterns, their search ([`cache::Compiled::scan`])
//!   and the process-wide [`Cache`] of them.

pub mod cache;
pub mod pcre;

use wasmtime::component::{HasSelf, Linker};

use self::cache::{Cache, ScanError};
use super::RunCaps;
use crate::bindings::moonwall::sandbox::regex as wit;

/// Regular expressions are computation: every tenant has them.
#[derive(Debug, Default)]
pub struct Grant {}

/// Per-run state: none. Compiled patterns are kept per tenant ([`Cache`]).
#[derive(Default)]
pub struct State {}

/// The options that change how a pattern compiles (part of its cache key);
/// by default, none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Syntax {
    pub caseless: bool,
    pub multiline: bool,
    pub dotall: bool,
    pub extended: bool,
    pub utf8: bool,
    pub dupnames: bool,
}

impl Syntax {
    fn of(options: wit::Options) -> Syntax {
        Syntax {
            caseless: options.contains(wit::Options::CASELESS),
            multiline: options.contains(wit::Options::MULTILINE),
            dotall: options.contains(wit::Options::DOTALL),
            extended: options.contains(wit::Options::EXTENDED),
            utf8: options.contains(wit::Options::UTF8),
            dupnames: options.contains(wit::Options::DUPNAMES),
        }
    }

    fn key_byte(self) -> u8 {
        u8::from(self.caseless)
            | u8::from(self.multiline) << 1
            | u8::from(self.dotall) << 2
            | u8::from(self.extended) << 3
            | u8::from(self.utf8) << 4
            | u8::from(self.dupnames) << 5
    }
}

// ---------------------------------------------------------------------------
// The WIT functions

impl wit::Host for RunCaps {
    fn compile(
        &mut self,
        pattern: Vec<u8>,
        options: wit::Options,
    ) -> wasmtime::Result<Result<wit::PatternInfo, String>> {
        let tenant = &self.grants.tenant;
        match Cache::get(tenant, pattern, Syntax::of(options), Some(&mut self.work)) {
            Ok(compiled) => Ok(Ok(wit::PatternInfo {
                groups: compiled.groups,
                names: compiled.names.clone(),
            })),
            Err(ScanError::Refused(error)) => Ok(Err(error)),
            Err(ScanError::Stopped(stop)) => Err(stop),
        }
    }

    fn scan(
        &mut self,
        pattern: Vec<u8>,
        options: wit::Options,
        subject: Vec<u8>,
        start: u32,
        want_groups: u32,
        max_matches: u32,
    ) -> wasmtime::Result<Result<wit::Matches, String>> {
        let tenant = &self.grants.tenant;
        let compiled = match Cache::get(tenant, pattern, Syntax::of(options), Some(&mut self.work))
        {
            Ok(compiled) => compiled,
            Err(ScanError::Refused(error)) => return Ok(Err(error)),
            Err(ScanError::Stopped(stop)) => return Err(stop),
        };
        let checks_utf8 =
            options.contains(wit::Options::UTF8) && !options.contains(wit::Options::NO_UTF8_CHECK);
        if checks_utf8 {
            // Validating is work on the subject too.
            self.work
                .step(crate::sandbox::HostWork::cost(subject.len(), 1))?;
            if let Err(error) = std::str::from_utf8(&subject) {
                return Ok(Err(format!(
                    "the subject is not valid UTF-8 (at byte {}): \
                     the \"u\" option needs UTF-8, \"U\" skips this check",
                    error.valid_up_to()
                )));
            }
        }
        match compiled.scan(
            &subject,
            start,
            want_groups,
            max_matches,
            options.contains(wit::Options::ANCHORED),
            Some(&mut self.work),
        ) {
            Ok((groups, offsets, next)) => Ok(Ok(wit::Matches {
                groups,
                offsets,
                next,
            })),
            Err(ScanError::Refused(error)) => Ok(Err(error)),
            Err(ScanError::Stopped(stop)) => Err(stop),
        }
    }
}

/// The capability: granted to every tenant, nothing per run.
pub struct Regex;

impl super::Capability for Regex {
    type Section = super::policy::NoSection;
    type Config = ();
    type Grant = Grant;
    type State = State;

    fn grant(_: &str, _: &(), _: Option<&Grant>, _: &super::CapsSettings) -> Result<Grant, String> {
        Ok(Grant {})
    }

    fn add_to_linker<T: Send + 'static>(
        linker: &mut Linker<T>,
        get: super::Project<T>,
    ) -> wasmtime::Result<()> {
        wit::add_to_linker::<T, HasSelf<RunCaps>>(linker, get)
    }
}
