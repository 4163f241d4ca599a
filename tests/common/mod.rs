//! Shared set-up for the integration tests: one sandbox per test binary,
//! shared by its tests (each run still gets a fresh instance).

#![allow(dead_code)]

pub mod site;
pub mod tls;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use moonwall::{CapturedOutput, EngineSettings, Limits, Outcome, Program, RunReport, Sandbox};

/// A cache directory inside target/, so tests never touch the user's cache.
pub fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("moonwall-cache")
}

pub fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        let settings = EngineSettings {
            cache_dir: Some(cache_dir()),
            ..EngineSettings::default()
        };
        Sandbox::new(settings).expect("the sandbox starts")
    })
}

/// Limits for tests: small enough that runaway scripts end quickly.
pub fn test_limits() -> Limits {
    Limits {
        fuel: 200_000_000,
        timeout: Duration::from_secs(10),
        memory_bytes: 32 << 20,
        output_bytes: 64 << 10,
    }
}

pub fn run_with(source: &str, limits: &Limits) -> (RunReport, CapturedOutput) {
    sandbox()
        .run_captured(&Program::script("t.lua", source), limits)
        .expect("the sandbox runs the script")
}

pub fn run(source: &str) -> (RunReport, CapturedOutput) {
    run_with(source, &test_limits())
}

/// Run a script that must complete; its stdout.
#[track_caller]
pub fn stdout_of(source: &str) -> String {
    let (report, output) = run(source);
    assert_eq!(
        report.outcome,
        Outcome::Completed,
        "stdout so far: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}
