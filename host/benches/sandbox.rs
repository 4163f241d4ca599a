//! The per-run cost of isolation: a fresh instance for every run.
//!
//! - `instantiate_and_drop`: create an instance from the pre-linked guest
//!   (pooling allocator, copy-on-write memory) and drop it, running nothing.
//! - `run/empty`, `run/hello`: a whole run of a trivial script: instantiate,
//!   create a Lua state, open the libraries, compile and run the chunk, close
//!   the state, drop the instance.
//! - `run/fib25`: CPU-bound Lua, to compare with the fixed costs above.
//! - `http/hello`: one HTTP request through the phases (`ngx.say("hello")`),
//!   in a fresh instance that sets up the `ngx` API, with the response
//!   collected in memory: the server's per-request sandbox cost.

use criterion::{Criterion, criterion_group, criterion_main};
use moonwall::http::request::RequestHead;
use moonwall::http::{CollectedResponse, Handlers, HttpOutcome, RequestLog, Source};
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
    let sandbox = sandbox();
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
        "http",
        ([127, 0, 0, 1], 80).into(),
        ([127, 0, 0, 1], 1).into(),
    );
    let handlers = Handlers {
        content: Some(Source {
            name: "@hello.lua".into(),
            code: b"ngx.say('hello')".to_vec(),
        }),
        ..Handlers {
            rewrite: None,
            access: None,
            content: None,
            header_filter: None,
            body_filter: None,
            log: None,
        }
    };
    let serve = || {
        let sink = Box::new(CollectedResponse::default());
        sandbox
            .serve_request(
                &request,
                &handlers,
                &limits,
                sink,
                RequestLog::new(0, String::new()),
            )
            .unwrap()
    };
    assert_eq!(serve().0.outcome, HttpOutcome::Served);
    c.bench_function("http/hello", |b| b.iter(serve));
}

criterion_group!(benches, bench);
criterion_main!(benches);
