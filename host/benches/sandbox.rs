//! The per-run cost of isolation: a fresh instance for every run.
//!
//! - `instantiate_and_drop`: create an instance from the pre-linked guest
//!   (pooling allocator, copy-on-write memory) and drop it, running nothing.
//! - `run/empty`, `run/hello`: a whole run of a trivial script: instantiate,
//!   create a Lua state, open the libraries, compile and run the chunk, close
//!   the state, drop the instance.
//! - `run/fib25`: CPU-bound Lua, to compare with the fixed costs above.
//! - `http/hello`: one HTTP request through the phases (`ngx.say("hello")`),
//!   in a fresh instance of the prepared guest, with the response collected
//!   in memory: the server's per-request sandbox cost.
//! - `http/script_lines/N`: the same with a script of N lines, compiled from
//!   source in each request: what script size costs.
//! - `http/allocating/MODE`: a handler allocating about 1 MB under each mode
//!   of Lua's collector.
//! - `http/cold_script/N`: the first request of a script never seen before
//!   (N lines): the server's script cache reads it, compiles it in an
//!   instance of its own to vet it, then the request runs it (as bytecode).
//!   The server's cold start of a new script, short of the network.
//! - `http/large_script/N`: a script of N lines served the warm way: the
//!   script cache checks the file (one `stat`) and hands the request the
//!   bytecode it compiled once; the request loads it and runs it. Compare
//!   with `http/script_lines/N` (source, parsed by every request) and
//!   `http/hello`. `N_unrun`: the same code inside `if false then ... end`,
//!   loaded but not run (what loading the bytecode costs).
//! - `http/require_5000`: a hello script that requires ten generated modules
//!   of 500 lines each from a lib dir, compiled once by the files
//!   capability's module cache and loaded as bytecode by every request.
//!   `http/require_5000/init`: the same modules required once by the
//!   tenant's init script (OpenResty's `init_by_lua`), snapshotted: every
//!   request starts with them loaded.
//! - `http/large_script/1000_init`: a 1,000-line module required by the init
//!   script, called by a small content script.
//! - `http/hello/init`: a hello from a prepared state; `http/hello/init_5000`:
//!   a hello from the state of `http/require_5000/init` (ten modules loaded).

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use moonwall::PreparedGuest;
use moonwall::caps::RequestCaps;
use moonwall::http::request::RequestHead;
use moonwall::http::{
    CollectedResponse, Handlers, HttpOutcome, HttpReport, Request, RequestLog, Source,
};
use moonwall::{CapturedOutput, EngineSettings, Limits, Outcome, Program, Sandbox};

fn sandbox() -> Sandbox {
    let cache =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/moonwall-bench-cache");
    Sandbox::new(EngineSettings {
        cache_dir: Some(cache),
        ..EngineSettings::default()
    })
    .expect("sandbox")
}

fn bench(c: &mut Criterion) {
    let shared = Arc::new(sandbox());
    let sandbox = &*shared;
    let limits = Limits::default();

    c.bench_function("instantiate_and_drop", |b| {
        b.iter(|| sandbox.instantiate_and_drop(&limits).unwrap())
    });

    let mut group = c.benchmark_group("run");
    for (name, source) in [
        ("empty", "local x = 1"),
        ("hello", "print('hello')"),
        (
            "fib25",
            "local function fib(n) if n < 2 then return n end return fib(n-1) + fib(n-2) end print(fib(25))",
        ),
    ] {
        let program = Program::script("bench.lua", source);
        let (report, _) = sandbox
            .run(&program, &limits, CapturedOutput::default())
            .unwrap();
        assert_eq!(report.outcome, Outcome::Completed);
        group.bench_function(name, |b| {
            b.iter(|| {
                sandbox
                    .run(&program, &limits, CapturedOutput::default())
                    .unwrap()
            })
        });
    }
    group.finish();

    let parts = hyper::Request::builder()
        .uri("/hello")
        .header("host", "localhost")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let request = RequestHead::from_parts(&parts).unwrap().into_request(
        Vec::new(),
        ([127, 0, 0, 1], 80).into(),
        ([127, 0, 0, 1], 1).into(),
        None,
    );
    let handlers = content_handler("ngx.say('hello')");
    let serve = || serve_once(sandbox, &request, &handlers, &limits);
    let report = serve();
    assert_eq!(report.outcome, HttpOutcome::Served);
    eprintln!("http/hello: {} fuel per request", report.fuel_used);
    c.bench_function("http/hello", |b| b.iter(serve));
    cold_scripts(c, sandbox, &request, &limits);
    large_scripts(c, sandbox, &request, &limits);
    required_modules(c, &shared, &request, &limits);

    // The many-scripts question: what a script's size costs per request when
    // it is compiled from source in every request's instance.
    let mut group = c.benchmark_group("http/script_lines");
    for lines in [10, 100, 1000] {
        let handlers = content_handler(&generated_script(lines));
        let serve = || serve_once(sandbox, &request, &handlers, &limits);
        assert_eq!(serve().outcome, HttpOutcome::Served);
        group.bench_function(lines.to_string(), |b| b.iter(serve));
    }
    group.finish();

    // The collector: a handler that allocates about 1 MB, under Lua's default
    // (incremental) mode, generational mode, and with the collector stopped.
    let mut group = c.benchmark_group("http/allocating");
    let work =
        "local t = {} for i = 1, 20000 do t[i] = 'item ' .. i end ngx.say(#table.concat(t, ','))";
    for (mode, prelude) in [
        ("incremental", ""),
        ("generational", "collectgarbage('generational') "),
        ("stopped", "collectgarbage('stop') "),
    ] {
        let handlers = content_handler(&format!("{prelude}{work}"));
        let serve = || serve_once(sandbox, &request, &handlers, &limits);
        assert_eq!(serve().outcome, HttpOutcome::Served);
        group.bench_function(mode, |b| b.iter(serve));
    }
    group.finish();
}

/// One request through the phases, its response collected in memory.
fn serve_once(
    sandbox: &Sandbox,
    request: &Request,
    handlers: &Handlers,
    limits: &Limits,
) -> HttpReport {
    serve_with(sandbox, request, handlers, limits, RequestCaps::none())
}

fn serve_with(
    sandbox: &Sandbox,
    request: &Request,
    handlers: &Handlers,
    limits: &Limits,
    caps: RequestCaps,
) -> HttpReport {
    let sink = Box::new(CollectedResponse::default());
    let log = RequestLog::new(0, String::new());
    sandbox
        .serve_request(request, handlers, limits, sink, log, caps)
        .unwrap()
        .0
}

fn content_handler(code: &str) -> Handlers {
    Handlers {
        rewrite: None,
        access: None,
        content: Some(Source {
            name: "@bench.lua".into(),
            code: code.as_bytes().to_vec(),
            binary: false,
        }),
        header_filter: None,
        body_filter: None,
        log: None,
        balancer: None,
    }
}

/// The first request of a new script through the server's script cache.
fn cold_scripts(c: &mut Criterion, sandbox: &Sandbox, request: &Request, limits: &Limits) {
    use moonwall::http::scripts::{PhaseScripts, ScriptCache};
    let dir = std::env::temp_dir().join(format!("moonwall-bench-cold-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut group = c.benchmark_group("http/cold_script");
    for lines in [10, 1000] {
        let body = generated_script(lines);
        let mut n = 0u64;
        group.bench_function(lines.to_string(), |b| {
            b.iter(|| {
                // A fresh cache and a script of new content, each time.
                n += 1;
                let path = dir.join(format!("s{n}.lua"));
                std::fs::write(&path, format!("-- {n}\n{body}")).unwrap();
                let cache = ScriptCache::default();
                let scripts = PhaseScripts::content(path.clone());
                let handlers =
                    moonwall::sandbox::block_on(cache.load(sandbox, &scripts, &dir, None)).unwrap();
                let report = serve_once(sandbox, request, &handlers, limits);
                assert_eq!(report.outcome, HttpOutcome::Served);
                let _ = std::fs::remove_file(&path);
            })
        });
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A script served from the script cache, warm: bytecode compiled once.
fn large_scripts(c: &mut Criterion, sandbox: &Sandbox, request: &Request, limits: &Limits) {
    use moonwall::http::scripts::{PhaseScripts, ScriptCache};
    let dir = std::env::temp_dir().join(format!("moonwall-bench-large-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut group = c.benchmark_group("http/large_script");
    let lines = 1000;
    let source = generated_module_script(lines, "");
    // The same functions and tables inside `if false then ... end`: loading
    // the bytecode without running its top level, to tell the two apart.
    let body = source.strip_prefix("local M = {}\n").unwrap();
    let body = &body[..body.find("local unused").unwrap()];
    let unrun = format!("local M = {{}}\nif false then\n{body}end\nngx.say('hello')\n");
    for (name, source) in [
        (lines.to_string(), source),
        (format!("{lines}_unrun"), unrun),
    ] {
        let path = dir.join(format!("large{name}.lua"));
        std::fs::write(&path, &source).unwrap();
        let cache = ScriptCache::default();
        let scripts = PhaseScripts::content(path);
        let load =
            || moonwall::sandbox::block_on(cache.load(sandbox, &scripts, &dir, None)).unwrap();
        let first = load();
        let content = first.content.as_ref().unwrap();
        assert!(content.binary);
        let report = serve_once(sandbox, request, &first, limits);
        assert_eq!(report.outcome, HttpOutcome::Served);
        eprintln!(
            "http/large_script/{name}: {} lines, {} bytes of source, {} bytes of bytecode, {} fuel per request",
            source.lines().count(),
            source.len(),
            content.code.len(),
            report.fuel_used
        );
        let serve = || serve_once(sandbox, request, &load(), limits);
        group.bench_function(name, |b| b.iter(serve));
        assert_eq!(cache.compiles(), 1);
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A hello script requiring ten modules of 500 lines from a lib dir, whose
/// bytecode the files capability's module cache keeps.
fn required_modules(c: &mut Criterion, sandbox: &Arc<Sandbox>, request: &Request, limits: &Limits) {
    use moonwall::caps::{CapsSettings, Grants};
    use moonwall::http::scripts::SandboxCompiler;
    use moonwall::tenants::policy::Capabilities;
    let dir = std::env::temp_dir().join(format!("moonwall-bench-lib-{}", std::process::id()));
    let lib = dir.join("lib");
    std::fs::create_dir_all(&lib).unwrap();
    let (modules, lines_each) = (10, 500);
    let mut script = String::new();
    let (mut source_bytes, mut lines) = (0, 0);
    for m in 0..modules {
        let module = generated_module_script(lines_each, &format!("m{m}"));
        source_bytes += module.len();
        lines += module.lines().count();
        std::fs::write(lib.join(format!("m{m}.lua")), module).unwrap();
        script.push_str(&format!(
            "local m{m} = require('m{m}')
"
        ));
    }
    script.push_str(
        "ngx.say('hello')
",
    );
    let capabilities = Capabilities {
        files: moonwall::caps::files::Config {
            lib_dirs: vec![lib.canonicalize().unwrap()],
            ..Default::default()
        },
        ..Capabilities::default()
    };
    let settings = CapsSettings {
        module_compiler: Some(SandboxCompiler::shared(sandbox.clone())),
        ..CapsSettings::default()
    };
    let grants = Arc::new(Grants::from_policy("bench", &capabilities, None, &settings).unwrap());
    let handlers = content_handler(&script);
    let serve = || {
        serve_with(
            sandbox,
            request,
            &handlers,
            limits,
            RequestCaps::of(grants.clone()),
        )
    };
    assert_eq!(serve().outcome, HttpOutcome::Served);
    let stats = grants.files.module_cache_stats();
    assert_eq!(stats.compiled, modules);
    eprintln!(
        "http/require_5000: {modules} modules, {lines} lines, {source_bytes} bytes of source, {} bytes of bytecode, {} fuel per request",
        stats.bytes,
        serve().fuel_used
    );
    c.bench_function("http/require_5000", |b| b.iter(serve));

    // The same modules required by the tenant's init script: every request
    // starts with them loaded, and its own `require`s find them there.
    let init = script.replace("ngx.say('hello')\n", "");
    let guest = prepared(sandbox, &init, limits, grants.clone());
    let serve = || serve_from(sandbox, &guest, request, &handlers, limits, grants.clone());
    let report = serve();
    assert_eq!(report.outcome, HttpOutcome::Served);
    eprintln!(
        "http/require_5000/init: {} fuel per request",
        report.fuel_used
    );
    c.bench_function("http/require_5000/init", |b| b.iter(serve));
    // A hello from that state: what its size costs a request that uses
    // none of it.
    let hello = content_handler("ngx.say('hello')");
    let serve = || serve_from(sandbox, &guest, request, &hello, limits, grants.clone());
    let report = serve();
    assert_eq!(report.outcome, HttpOutcome::Served);
    eprintln!(
        "http/hello/init_5000: {} fuel per request, peak memory {} KiB",
        report.fuel_used,
        report.peak_memory_bytes / 1024
    );
    c.bench_function("http/hello/init_5000", |b| b.iter(serve));

    // A 1,000-line application module required by the init script; the
    // request calls into it.
    std::fs::write(lib.join("app.lua"), generated_module_script(1000, "app")).unwrap();
    let guest = prepared(sandbox, "require('app')\n", limits, grants.clone());
    let handlers = content_handler(
        "local app = require('app')\nlocal unused = app.f1(1, 2)\nngx.say('hello')\n",
    );
    let serve = || serve_from(sandbox, &guest, request, &handlers, limits, grants.clone());
    let report = serve();
    assert_eq!(report.outcome, HttpOutcome::Served);
    eprintln!(
        "http/large_script/1000_init: {} fuel per request",
        report.fuel_used
    );
    c.bench_function("http/large_script/1000_init", |b| b.iter(serve));

    // A hello from a prepared state whose init script did nothing much.
    let guest = prepared(sandbox, "greeting = 'hello'\n", limits, grants.clone());
    let handlers = content_handler("ngx.say(greeting)");
    let serve = || serve_from(sandbox, &guest, request, &handlers, limits, grants.clone());
    assert_eq!(serve().outcome, HttpOutcome::Served);
    c.bench_function("http/hello/init", |b| b.iter(serve));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A tenant's prepared state after `init`, with the time it took.
fn prepared(
    sandbox: &Sandbox,
    init: &str,
    limits: &Limits,
    grants: Arc<moonwall::caps::Grants>,
) -> Arc<PreparedGuest> {
    let source = Source {
        name: "@init.lua".into(),
        code: init.as_bytes().to_vec(),
        binary: false,
    };
    let started = std::time::Instant::now();
    let caps = RequestCaps::for_init(grants);
    let guest = moonwall::sandbox::block_on(sandbox.prepare_tenant(source, limits, caps.into()))
        .unwrap()
        .unwrap();
    eprintln!("prepared in {:?}: {guest:?}", started.elapsed());
    guest
}

fn serve_from(
    sandbox: &Sandbox,
    guest: &Arc<PreparedGuest>,
    request: &Request,
    handlers: &Handlers,
    limits: &Limits,
    grants: Arc<moonwall::caps::Grants>,
) -> HttpReport {
    let sink = Box::new(CollectedResponse::default());
    let log = RequestLog::new(0, String::new());
    sandbox
        .serve_request_from(
            guest,
            request,
            handlers,
            limits,
            sink,
            log,
            RequestCaps::of(grants),
        )
        .unwrap()
        .0
}

/// About `lines` lines of ordinary module code: small functions and tables
/// in a module table (so no limit on locals applies), returned when `name`
/// is a module name, else followed by a hello.
fn generated_module_script(lines: usize, name: &str) -> String {
    let mut code = String::from("local M = {}\n");
    for i in 0..(lines - 3) / 8 {
        code.push_str(&format!(
            "M.t{i} = {{ id = {i}, name = \"item{i}\", tags = {{ \"a\", \"b\" }} }}\n\
             function M.f{i}(a, b)\n  local t = {{ x = a, y = b, name = \"f{i}\" }}\n  if a > b then\n    return t.x - b\n  end\n  return t.y + a * {i}\nend\n"
        ));
    }
    if name.is_empty() {
        code.push_str("local unused = M.f1(1, 2)\nngx.say('hello')\n");
    } else {
        code.push_str("M.name = ...\nreturn M\n");
    }
    code
}

/// A script of about `lines` lines of ordinary code: small functions and
/// tables, only the last of which runs.
fn generated_script(lines: usize) -> String {
    let mut script = String::new();
    for i in 0..lines / 5 {
        script.push_str(&format!(
            "local function f{i}(a, b)\n  local t = {{ x = a, y = b, name = \"f{i}\" }}\n  if a > b then return t.x - b end\n  return t.y + a * {i}\nend\n"
        ));
    }
    script.push_str("ngx.say('hello')\n");
    script
}

criterion_group!(benches, bench);
criterion_main!(benches);
