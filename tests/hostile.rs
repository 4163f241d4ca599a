//! The hostile corpus: every script in tests/hostile/ attacks the sandbox in
//! some way and declares what a correct sandbox does with it:
//!
//! ```lua
//! -- expect: limit=fuel            (completed | error=TEXT | syntax=TEXT | limit=KIND[|KIND...])
//! -- limits: fuel=50000000 memory_mib=16   (optional: fuel timeout_ms memory_mib output_kib)
//! -- why: what the attack is
//! ```
//!
//! All of them run in one process, one after another; after each, a normal
//! script must still run correctly. Nothing may fault or escape.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use moonwall::{Limits, Outcome, Program};

#[derive(Debug)]
struct Case {
    path: PathBuf,
    expect: String,
    limits: Limits,
}

fn parse(path: &Path) -> Result<Case, String> {
    let source = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let mut expect = None;
    let mut limits = Limits {
        fuel: 200_000_000,
        timeout: Duration::from_millis(10_000),
        memory_bytes: 32 << 20,
        output_bytes: 64 << 10,
    };
    for (number, line) in source
        .lines()
        .enumerate()
        .take_while(|(_, l)| l.starts_with("--"))
    {
        let at = format!("{}:{}", path.display(), number + 1);
        if let Some(value) = line.strip_prefix("-- expect:") {
            expect = Some(value.trim().to_string());
        } else if let Some(value) = line.strip_prefix("-- limits:") {
            for pair in value.split_whitespace() {
                let (key, number) = pair
                    .split_once('=')
                    .ok_or(format!("{at}: `{pair}` is not key=value"))?;
                let number: u64 = number
                    .parse()
                    .map_err(|_| format!("{at}: `{pair}` is not a number"))?;
                match key {
                    "fuel" => limits.fuel = number,
                    "timeout_ms" => limits.timeout = Duration::from_millis(number),
                    "memory_mib" => limits.memory_bytes = number as usize * 1024 * 1024,
                    "output_kib" => limits.output_bytes = number as usize * 1024,
                    other => return Err(format!("{at}: unknown limit `{other}`")),
                }
            }
        }
    }
    let expect = expect.ok_or(format!("{}: no `-- expect:` line", path.display()))?;
    Ok(Case {
        path: path.to_path_buf(),
        expect,
        limits,
    })
}

fn matches(expect: &str, outcome: &Outcome) -> bool {
    match (expect.split_once('='), outcome) {
        (None, Outcome::Completed) => expect == "completed",
        (Some(("error", text)), Outcome::LuaError { message, .. }) => message.contains(text),
        (Some(("syntax", text)), Outcome::SyntaxError { message }) => message.contains(text),
        (Some(("limit", kinds)), Outcome::LimitExceeded(limit)) => {
            kinds.split('|').any(|k| k == limit.kind())
        }
        _ => false,
    }
}

#[test]
fn every_hostile_script_ends_as_declared() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/hostile");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/hostile exists")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "lua"))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 60,
        "the corpus has {} scripts, want at least 60",
        paths.len()
    );

    let mut failures = Vec::new();
    for path in &paths {
        let case = match parse(path) {
            Ok(case) => case,
            Err(error) => {
                failures.push(error);
                continue;
            }
        };
        let source = std::fs::read(&case.path).unwrap();
        let name = case.path.file_name().unwrap().to_string_lossy().to_string();
        let (report, _) = common::sandbox()
            .run_captured(&Program::script(&name, source), &case.limits)
            .expect("the sandbox runs every script");
        if !matches(&case.expect, &report.outcome) {
            failures.push(format!(
                "{name}: expected {}, got {:?}",
                case.expect, report.outcome
            ));
        }
        assert_eq!(
            common::stdout_of("print(1 + 1)"),
            "2\n",
            "a normal run after {name}"
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} scripts:\n{}",
        failures.len(),
        paths.len(),
        failures.join("\n")
    );
}
