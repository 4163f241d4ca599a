//! Engine configuration: the one place that decides how a guest is held to
//! its limits. Which values a request gets (defaults, ranges, the names in
//! policies, site configs and flags) is defined once in `site::limits`;
//! this module enforces them:
//! - **fuel** (`consume_fuel`): a budget of wasm instructions per run;
//! - **time** (epoch interruption): one shared ticker thread advances the
//!   engine's epoch every [`EngineSettings::epoch_tick`]; each run checks its own
//!   wall-clock deadline when a tick arrives. Never a thread per run;
//! - **memory** ([`RunLimiter`], a `ResourceLimiter`): the cap on the instance's
//!   linear memory, with the high-water mark recorded;
//! - **native stack** (`max_wasm_stack`): how deep guest code may recurse on
//!   the host's machine stack;
//! - **output**: bytes a run may write (enforced in `host_api.rs`, and for a
//!   response body in `caps::http`);
//! - the **pooling instance allocator** with copy-on-write memory images, so
//!   a fresh instance per run costs microseconds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig, ResourceLimiter,
    UpdateDeadline,
};

use super::SandboxError;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// The limits one run is held to. A run that reaches any of them is stopped
/// where it stands; no Lua code (`pcall`, coroutines, finalizers) can catch it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Fuel: roughly one unit per wasm instruction executed.
    pub fuel: u64,
    /// Wall-clock time from the start of instantiation.
    pub timeout: Duration,
    /// Size the guest's linear memory may reach, in bytes.
    pub memory_bytes: usize,
    /// Bytes of output (`print`, warnings) the run may write.
    pub output_bytes: usize,
}

impl Limits {
    /// About 0.85 s of guest CPU on this project's machines (fib(25) takes ~114 M).
    pub const DEFAULT_FUEL: u64 = 10_000_000_000;
    pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;
    pub const DEFAULT_MEMORY_MIB: usize = 64;
    pub const DEFAULT_OUTPUT_KIB: usize = 4 * 1024;
    /// The guest needs about 1.3 MiB before Lua allocates anything (its C
    /// stack and static data): smaller caps could never run a script.
    pub const MIN_MEMORY_MIB: usize = 2;
    /// wasm32 addresses at most 4 GiB; keep below it so that every failed
    /// growth goes through the limiter.
    pub const MAX_MEMORY_MIB: usize = 4095;

    /// Check that the limits are usable, saying which is not.
    pub fn validate(&self) -> Result<(), SandboxError> {
        let invalid = |what: String| Err(SandboxError::InvalidLimits(what));
        if self.fuel == 0 {
            return invalid("fuel must be at least 1".into());
        }
        if self.timeout.is_zero() {
            return invalid("the time limit must be at least 1 ms".into());
        }
        let mib = self.memory_bytes / MIB;
        if self.memory_bytes < Self::MIN_MEMORY_MIB * MIB || mib > Self::MAX_MEMORY_MIB {
            return invalid(format!(
                "the memory limit must be between {} and {} MiB",
                Self::MIN_MEMORY_MIB,
                Self::MAX_MEMORY_MIB
            ));
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: Self::DEFAULT_FUEL,
            timeout: Duration::from_millis(Self::DEFAULT_TIMEOUT_MS),
            memory_bytes: Self::DEFAULT_MEMORY_MIB * MIB,
            output_bytes: Self::DEFAULT_OUTPUT_KIB * KIB,
        }
    }
}

/// Process-wide settings of the engine that runs guests.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// The largest memory cap any run may ask for (the size of a pool slot).
    pub max_memory_bytes: usize,
    /// The native stack guest code may use.
    pub max_wasm_stack_bytes: usize,
    /// How many instances may be alive at once (the pool's size).
    pub max_instances: u32,
    /// How often the shared ticker advances the epoch: the resolution of
    /// time limits.
    pub epoch_tick: Duration,
    /// Where compiled guest code is cached; `None` compiles at every start.
    pub cache_dir: Option<std::path::PathBuf>,
}

impl EngineSettings {
    /// Native stack for guest code. Lua bounds its own C recursion
    /// (LUAI_MAXCCALLS = 200 levels, "C stack overflow"); this is deep enough
    /// that Lua's own check comes first, and is the backstop if it does not.
    pub const DEFAULT_WASM_STACK_BYTES: usize = 4 * MIB;
    pub const DEFAULT_MAX_INSTANCES: u32 = 64;
    pub const DEFAULT_EPOCH_TICK: Duration = Duration::from_millis(1);

    /// What one request in flight costs in resident memory: its instance's
    /// touched pages (the prepared Lua state, the C stack it used, its own
    /// heap), its fiber stack and its store. Measured with bench/sleep
    /// (docs/benchmarks.md): 0.52 MiB per sleeping hello (the server's RSS
    /// with 2,000 of them, less its idle RSS, over 2,000), 0.59 MiB per
    /// request waiting on resty.http; 2 MiB leaves room for a request's own
    /// heap.
    pub const IN_FLIGHT_FOOTPRINT_BYTES: usize = 2 * MIB;
    /// The fewest requests in flight a server allows by default.
    pub const MIN_IN_FLIGHT: usize = 64;
    /// The most requests in flight a server allows by default. Each is an
    /// instance in the pool with two memory slots (its linear memory and
    /// the heap of its exceptions), each reserving address space for the
    /// largest memory limit (4 GiB plus guards): 4,096 instances are about
    /// 34 TiB of the 128 TiB a process can address (reserved, not resident).
    pub const MAX_IN_FLIGHT: usize = 4096;

    /// Requests the server keeps in flight by default, sized from the
    /// machine's memory: a quarter of it, at
    /// [`Self::IN_FLIGHT_FOOTPRINT_BYTES`] each, between
    /// [`Self::MIN_IN_FLIGHT`] and [`Self::MAX_IN_FLIGHT`].
    pub fn default_max_in_flight() -> usize {
        static DEFAULT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        *DEFAULT.get_or_init(|| {
            let memory = total_memory_bytes().unwrap_or(4096 * MIB);
            (memory / 4 / Self::IN_FLIGHT_FOOTPRINT_BYTES)
                .clamp(Self::MIN_IN_FLIGHT, Self::MAX_IN_FLIGHT)
        })
    }
}

/// The machine's memory, from /proc/meminfo.
fn total_memory_bytes() -> Option<usize> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(KIB)
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            max_memory_bytes: Limits::MAX_MEMORY_MIB * MIB,
            max_wasm_stack_bytes: Self::DEFAULT_WASM_STACK_BYTES,
            max_instances: Self::DEFAULT_MAX_INSTANCES,
            epoch_tick: Self::DEFAULT_EPOCH_TICK,
            cache_dir: super::cache::default_dir(),
        }
    }
}

/// Bytes of each pooled table slot kept resident between instances.
const TABLE_KEEP_RESIDENT_BYTES: usize = 64 * KIB;
/// Bytes of each pooled memory slot kept resident between instances: the C
/// stack (1 MiB), the prepared state and room for a request's own heap. Only
/// pages a run touched stay resident, so a slot costs at most this much RSS.
const LINEAR_MEMORY_KEEP_RESIDENT_BYTES: usize = 8 * MIB;

/// Build the engine every guest runs in.
pub(crate) fn build_engine(settings: &EngineSettings) -> Result<Engine, SandboxError> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    // Lua's error handling (setjmp/longjmp) is compiled to wasm exceptions.
    config.wasm_exceptions(true);
    config.cranelift_opt_level(OptLevel::Speed);
    config.consume_fuel(true);
    config.epoch_interruption(true);
    config.max_wasm_stack(settings.max_wasm_stack_bytes);
    // Runs on a fiber (async) need room for the guest's stack plus the host
    // functions it calls.
    config.async_stack_size(settings.max_wasm_stack_bytes + 512 * KIB);

    let instances = settings.max_instances;
    let mut pool = PoolingAllocationConfig::default();
    // One guest component holds its main module plus the small adapter
    // modules wit-component adds for the canonical ABI.
    pool.total_component_instances(instances);
    pool.total_core_instances(instances * 4);
    // Two memories an instance: its linear memory, and the GC heap that
    // holds its wasm exceptions (Lua's errors), which the pool allocates
    // from the same memory slots.
    pool.total_memories(instances * 2);
    pool.total_tables(instances * 4);
    pool.total_gc_heaps(instances);
    // Every run is async, on a fiber stack of its own from the pool.
    pool.total_stacks(instances);
    pool.max_memory_size(settings.max_memory_bytes);
    // Reset tables and the start of linear memory in place instead of
    // discarding their pages on every drop, so the next instance does not
    // fault them back in; where the kernel offers it (Linux 6.7+), only the
    // pages a run actually wrote are reset, found with the PAGEMAP_SCAN
    // ioctl. Measured in docs/benchmarks.md: instantiate-and-drop 29 ->
    // 7.8 µs with the scan; an HTTP hello 54 -> 37 µs with the scan and
    // 8 MiB kept resident (4 MiB: 51 µs, 16 MiB: 40 µs).
    pool.table_keep_resident(TABLE_KEEP_RESIDENT_BYTES);
    pool.linear_memory_keep_resident(LINEAR_MEMORY_KEEP_RESIDENT_BYTES);
    pool.pagemap_scan(wasmtime::Enabled::Auto);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    // Instantiate memories from a copy-on-write image of the initial data.
    config.memory_init_cow(true);
    // Tenants' prepared guests (sandbox/prepared.rs) differ from the guest
    // only in their memory image: Cranelift finds each function it compiled
    // before here instead of compiling it again.
    config
        .enable_incremental_compilation(Arc::new(CompiledFunctions::default()))
        .map_err(|e| SandboxError::Engine(e.to_string()))?;

    Engine::new(&config).map_err(|e| SandboxError::Engine(e.to_string()))
}

/// Cranelift's incremental compilation cache, in memory: the compiled code
/// of each function, keyed by a hash of its input. Every guest this engine
/// compiles has the same functions, so after the first compile the rest cost
/// lookups. Bounded: past [`MAX_CACHED_FUNCTION_BYTES`] nothing more is kept.
#[derive(Debug, Default)]
struct CompiledFunctions {
    /// The entries, and the bytes they hold.
    entries: std::sync::Mutex<(FunctionCache, usize)>,
}

type FunctionCache = std::collections::HashMap<Vec<u8>, Vec<u8>>;

/// The most compiled code the incremental cache keeps (the guest compiles
/// to about 1.5 MB).
const MAX_CACHED_FUNCTION_BYTES: usize = 64 * MIB;

impl wasmtime::CacheStore for CompiledFunctions {
    fn get(&self, key: &[u8]) -> Option<std::borrow::Cow<'_, [u8]>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.0.get(key).map(|value| value.clone().into())
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (map, bytes) = &mut *entries;
        let size = key.len() + value.len();
        if *bytes + size > MAX_CACHED_FUNCTION_BYTES {
            return false;
        }
        if map.insert(key.to_vec(), value).is_none() {
            *bytes += size;
        }
        true
    }
}

/// Caps and records what one instance's memories and tables may grow to.
#[derive(Debug)]
pub(crate) struct RunLimiter {
    memory_cap: usize,
    /// The memory this run shares with others (a request's subrequests),
    /// if any, and how much of it the run holds.
    pool: Option<Arc<super::MemoryPool>>,
    from_pool: usize,
    /// The largest linear memory size granted so far.
    pub(crate) peak_memory: usize,
    /// A growth was refused for the cap (or failed). A failed instantiation
    /// with this set means the cap is below what the guest needs to start.
    pub(crate) refused: bool,
}

impl Drop for RunLimiter {
    fn drop(&mut self) {
        self.release();
    }
}

/// Tables hold function references; the guest needs about a thousand.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl RunLimiter {
    pub(crate) fn new(memory_cap: usize) -> Self {
        RunLimiter {
            memory_cap,
            pool: None,
            from_pool: 0,
            peak_memory: 0,
            refused: false,
        }
    }

    /// Take this run's memory from `pool` too.
    pub(crate) fn share(&mut self, pool: Option<Arc<super::MemoryPool>>) {
        self.pool = pool;
    }

    /// Give the pool back what the run held: its instance is gone.
    pub(crate) fn release(&mut self) {
        if let Some(pool) = &self.pool {
            pool.give(std::mem::take(&mut self.from_pool));
        }
    }

    pub(crate) fn memory_cap(&self) -> usize {
        self.memory_cap
    }
}

impl ResourceLimiter for RunLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Refused quietly: malloc returns NULL, Lua collects garbage in an
        // emergency and retries, and only then raises its memory error,
        // which the guard turns into the memory limit.
        if desired > self.memory_cap {
            self.refused = true;
            return Ok(false);
        }
        // A run that shares its memory takes each growth from the pool.
        if let Some(pool) = &self.pool {
            let more = desired.saturating_sub(self.from_pool);
            if !pool.take(more) {
                self.refused = true;
                return Ok(false);
            }
            self.from_pool += more;
        }
        self.peak_memory = self.peak_memory.max(desired);
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.refused = true;
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Arm a store's wall-clock deadline: at every epoch tick the store pays its
/// fuel pool (if it shares one, [`super::fuel_pool`]; an empty pool stops it
/// on its fuel limit), checks whether `deadline` has passed and, if so,
/// interrupts the guest (a `Trap::Interrupt`); if not, the run yields to its
/// executor, so that one CPU-bound run cannot hold a thread that other
/// requests are waiting for.
pub(crate) fn arm_deadline<T: super::RunData>(store: &mut wasmtime::Store<T>, deadline: Instant) {
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |mut store| {
        // A run that shares its fuel pays for what it burnt since the last
        // tick, and stops once the pool is empty.
        if super::fuel_pool::settle(&mut store) {
            return Err(wasmtime::Error::new(wasmtime::Trap::OutOfFuel));
        }
        if Instant::now() >= deadline {
            Ok(UpdateDeadline::Interrupt)
        } else {
            // tokio's yield puts the run behind every task already waiting
            // (a plain self-wake would be polled again first).
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(tokio::task::yield_now()),
            ))
        }
    });
}

/// The one thread that advances an engine's epoch, for all runs at once.
/// It sleeps once no run has been alive for [`TICKER_LINGER_TICKS`] ticks,
/// so an idle server spends nothing on it, while back-to-back runs never
/// pay for waking it.
pub(crate) struct EpochTicker {
    stop: Arc<AtomicBool>,
    /// Runs alive now (stores holding an [`Awake`]).
    alive: Arc<AtomicUsize>,
    /// The thread is parked until a run wakes it.
    sleeping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Ticks the ticker keeps ticking after the last run ended, before it
/// sleeps: a run that starts meanwhile needs no wake-up call.
const TICKER_LINGER_TICKS: u32 = 100;

/// Keeps the ticker ticking while a run's store holds it.
pub(crate) struct Awake {
    alive: Arc<AtomicUsize>,
}

impl Drop for Awake {
    fn drop(&mut self) {
        self.alive.fetch_sub(1, Ordering::AcqRel);
    }
}

impl EpochTicker {
    pub(crate) fn start(engine: Engine, tick: Duration) -> Result<Self, SandboxError> {
        let stop = Arc::new(AtomicBool::new(false));
        let alive = Arc::new(AtomicUsize::new(0));
        let sleeping = Arc::new(AtomicBool::new(false));
        let (stop_flag, runs, asleep) = (stop.clone(), alive.clone(), sleeping.clone());
        let thread = std::thread::Builder::new()
            .name("moonwall-epoch".into())
            .spawn(move || {
                let mut idle_ticks = 0;
                while !stop_flag.load(Ordering::Relaxed) {
                    if runs.load(Ordering::SeqCst) > 0 {
                        idle_ticks = 0;
                    } else if idle_ticks < TICKER_LINGER_TICKS {
                        idle_ticks += 1;
                    } else {
                        // Announce the sleep, then look again: a run that
                        // started before the announcement is seen here, one
                        // that starts after it sees the announcement and
                        // wakes the thread (an unpark that comes first makes
                        // park return at once).
                        asleep.store(true, Ordering::SeqCst);
                        if runs.load(Ordering::SeqCst) == 0 && !stop_flag.load(Ordering::SeqCst) {
                            std::thread::park();
                        }
                        asleep.store(false, Ordering::SeqCst);
                        idle_ticks = 0;
                        continue;
                    }
                    std::thread::park_timeout(tick);
                    engine.increment_epoch();
                }
            })
            .map_err(|e| SandboxError::Engine(format!("cannot start the epoch thread: {e}")))?;
        Ok(EpochTicker {
            stop,
            alive,
            sleeping,
            thread: Some(thread),
        })
    }

    /// A run starts: tick until it (and every other) has ended.
    pub(crate) fn awake(&self) -> Awake {
        self.alive.fetch_add(1, Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst)
            && let Some(thread) = &self.thread
        {
            thread.thread().unpark();
        }
        Awake {
            alive: self.alive.clone(),
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}
