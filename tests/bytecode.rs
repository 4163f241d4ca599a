//! Scripts and lib-dir modules served as bytecode: compiled once per file
//! version by the host in an instance of its own that runs none of them,
//! then loaded by every request. Errors still name `script:line`, and the
//! guest loads bytecode only when the host says the code is its own.

use crate::common;

use std::path::{Path, PathBuf};

use common::site::{Site, shared_sandbox};
use moonwall::caps::RequestCaps;
use moonwall::http::request::RequestHead;
use moonwall::http::scripts::{PhaseScripts, ScriptCache};
use moonwall::http::{CollectedResponse, Handlers, HttpOutcome, HttpReport, Request, RequestLog};
use moonwall::sandbox::block_on;

/// A fresh directory for one test's scripts.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("bytecode")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn get(path: &str) -> Request {
    let parts = hyper::Request::builder()
        .uri(path)
        .header("host", "localhost")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    RequestHead::from_parts(&parts).unwrap().into_request(
        Vec::new(),
        ([127, 0, 0, 1], 80).into(),
        ([127, 0, 0, 1], 1).into(),
        None,
    )
}

/// Load `scripts` through `cache` (shown relative to `dir`).
fn load(cache: &ScriptCache, scripts: &PhaseScripts, dir: &Path) -> Handlers {
    block_on(cache.load(&shared_sandbox(), scripts, dir, None)).unwrap()
}

/// One request through `handlers`: the report and the body.
fn serve(handlers: &Handlers) -> (HttpReport, String) {
    let (report, sink) = shared_sandbox()
        .serve_request(
            &get("/t"),
            handlers,
            &common::test_limits(),
            Box::new(CollectedResponse::default()),
            RequestLog::new(0, "/t".into()),
            RequestCaps::none(),
        )
        .unwrap();
    let sink: Box<dyn std::any::Any> = sink;
    let body = sink.downcast::<CollectedResponse>().unwrap().body;
    (report, String::from_utf8_lossy(&body).into_owned())
}

/// Replace `path` with new contents (a new inode: always a new version).
fn replace(path: &Path, contents: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, contents).unwrap();
    std::fs::rename(&next, path).unwrap();
}

#[test]
fn a_script_is_compiled_once_and_served_as_bytecode() {
    let dir = scratch("served_twice");
    let path = dir.join("s.lua");
    std::fs::write(&path, "ngx.say('one')\n").unwrap();
    let cache = ScriptCache::default();
    let scripts = PhaseScripts::content(path.clone());
    for _ in 0..3 {
        let handlers = load(&cache, &scripts, &dir);
        let content = handlers.content.as_ref().unwrap();
        assert!(content.binary, "served as bytecode");
        assert!(content.code.starts_with(b"\x1bLua"));
        assert_eq!(content.name, "@s.lua");
        let (report, body) = serve(&handlers);
        assert_eq!(report.outcome, HttpOutcome::Served);
        assert_eq!(body, "one\n");
    }
    assert_eq!(cache.compiles(), 1);

    // An edit is compiled once, then served from memory again.
    replace(&path, "ngx.say('two')\n");
    for _ in 0..3 {
        let (_, body) = serve(&load(&cache, &scripts, &dir));
        assert_eq!(body, "two\n");
    }
    assert_eq!(cache.compiles(), 2);

    // A broken edit keeps the previous bytecode serving, compiled once.
    replace(&path, "ngx.say('three'\n");
    for _ in 0..3 {
        let handlers = load(&cache, &scripts, &dir);
        assert!(handlers.content.as_ref().unwrap().binary);
        assert_eq!(serve(&handlers).1, "two\n");
    }
    assert_eq!(cache.compiles(), 3);
}

#[test]
fn errors_of_bytecode_name_the_script_and_line() {
    let dir = scratch("runtime_error");
    std::fs::create_dir_all(dir.join("app")).unwrap();
    let path = dir.join("app/s.lua");
    std::fs::write(
        &path,
        "local function check(x)\n  if x then\n    error('boom: ' .. x)\n  end\nend\n\ncheck('now')\n",
    )
    .unwrap();
    let cache = ScriptCache::default();
    let handlers = load(&cache, &PhaseScripts::content(path), &dir);
    assert!(handlers.content.as_ref().unwrap().binary);
    let (report, _) = serve(&handlers);
    let HttpOutcome::LuaError {
        phase,
        message,
        traceback,
    } = report.outcome
    else {
        panic!("{:?}", report.outcome)
    };
    assert_eq!(phase, "content");
    assert_eq!(message, "app/s.lua:3: boom: now");
    // Line numbers and local names survive: the traceback is as from source.
    assert!(
        traceback.contains("app/s.lua:3: in upvalue 'check'")
            || traceback.contains("app/s.lua:3: in local 'check'"),
        "{traceback}"
    );
    assert!(
        traceback.contains("app/s.lua:7: in main chunk"),
        "{traceback}"
    );
}

#[test]
fn a_script_that_never_compiled_is_served_as_text_with_its_syntax_error() {
    let dir = scratch("never_compiled");
    let path = dir.join("s.lua");
    std::fs::write(&path, "ngx.say('x'\n").unwrap();
    let cache = ScriptCache::default();
    let handlers = load(&cache, &PhaseScripts::content(path), &dir);
    assert!(!handlers.content.as_ref().unwrap().binary);
    let (report, _) = serve(&handlers);
    assert!(
        matches!(&report.outcome, HttpOutcome::LuaError { message, .. }
            if message.starts_with("s.lua:2: ')' expected (to close '(' at line 1)")),
        "{:?}",
        report.outcome
    );
}

#[test]
fn a_script_file_holding_bytecode_is_never_loaded_as_bytecode() {
    // Bytecode a hostile tenant wrote into a script file: the host's
    // compile refuses it (text only), so it is handed over as text, and the
    // guest refuses it as text.
    let dir = scratch("file_bytecode");
    let path = dir.join("s.lua");
    let mut fake = b"\x1bLua\x54\x00\x19\x93\r\n\x1a\n\x04\x08\x08".to_vec();
    fake.extend_from_slice(&[0xff; 64]);
    std::fs::write(&path, &fake).unwrap();
    let cache = ScriptCache::default();
    let handlers = load(&cache, &PhaseScripts::content(path), &dir);
    let content = handlers.content.as_ref().unwrap();
    assert!(!content.binary);
    assert_eq!(content.code, fake);
    let (report, _) = serve(&handlers);
    assert!(
        matches!(&report.outcome, HttpOutcome::LuaError { message, .. }
            if message.contains("binary chunks are not allowed")),
        "{:?}",
        report.outcome
    );
}

#[test]
fn only_the_host_ever_sets_the_binary_flag() {
    // The flag that makes the guest load bytecode crosses the boundary only
    // from the host to the guest: with the handlers (`handle`, `log-only`),
    // the init script (`init`, which the host always sends as text) and
    // with a module `find-module` returns. Nothing the guest sends carries
    // one.
    assert_eq!(
        shared_sandbox().binary_flag_crossings(),
        [
            "export moonwall:sandbox/http-handler@0.1.0 handle: host to guest",
            "export moonwall:sandbox/http-handler@0.1.0 init: host to guest",
            "export moonwall:sandbox/http-handler@0.1.0 log-only: host to guest",
            "import moonwall:sandbox/files@0.1.0 find-module: host to guest",
        ]
    );
}

#[test]
fn scripts_cannot_load_bytecode_even_from_the_host() {
    // `load` and `string.dump` stay as they were: no bytecode in or out.
    let out = common::stdout_of(
        "print(pcall(string.dump, print))\n\
         print(load('\\27Lua'))\n\
         print(load('return 1', 'x', 'b'))\n",
    );
    assert_eq!(
        out,
        "false\tstring.dump is not available in the moonwall sandbox (binary chunks cannot be loaded back either)\n\
         nil\tbinary chunks are not allowed in the moonwall sandbox (only Lua source text is loaded)\n\
         nil\tbinary chunks are not allowed in the moonwall sandbox (only Lua source text is loaded)\n"
    );
}

/// A site whose policy grants `lib` to require from.
fn lib_site(name: &str, files: &[(&str, &str)]) -> Site {
    Site::start(name, "", "", "lib_dirs = [\"../lib\"]", files)
}

#[test]
fn modules_are_compiled_once_and_their_errors_name_file_and_line() {
    let site = lib_site(
        "bytecode_modules",
        &[
            (
                "lib/shapes/area.lua",
                "local M = {}\n\nfunction M.square(n)\n  if type(n) ~= 'number' then\n    error('not a number: ' .. tostring(n))\n  end\n  return n * n\nend\n\nreturn M\n",
            ),
            ("lib/broken.lua", "local x = = 1\n"),
            (
                "root/t.lua",
                "local area = require('shapes.area')\n\
                 ngx.say(area.square(7))\n\
                 ngx.say(select(2, pcall(area.square, 'x')))\n\
                 ngx.say(select(2, pcall(require, 'broken')))\n",
            ),
        ],
    );
    let expected = "49\n\
                    lib/shapes/area.lua:5: not a number: x\n\
                    error loading module 'broken' from file 'lib/broken.lua':\n\
                    \tlib/broken.lua:1: unexpected symbol near '='\n";
    for _ in 0..3 {
        let reply = site.get("/t.lua");
        assert!(reply.is_ok_with(expected), "{reply:#?}");
    }
    let tenant = site.registry.current();
    let stats = tenant
        .by_name("t")
        .unwrap()
        .grants
        .files
        .module_cache_stats();
    // shapes/area.lua as bytecode; broken.lua as its source (it does not
    // compile: the guest reports the error); both read and compiled once.
    assert_eq!(stats.modules, 2, "{stats:?}");
    assert_eq!(stats.compiled, 1, "{stats:?}");
    assert_eq!(stats.hits, 4, "{stats:?}");
}

/// Large scripts loaded through a cache bounded in bytes: what it keeps
/// (bytecode and paths) never exceeds the bound, the least recently used go
/// first, and a script dropped from it is compiled again and serves.
#[test]
fn the_script_cache_keeps_within_its_byte_bound() {
    let dir = scratch("byte_bound");
    const BOUND: usize = 2 << 20;
    let cache = ScriptCache::with_bounds(1000, BOUND);
    // Each about 400 KiB of bytecode (a long string constant).
    let filler = "x".repeat(400 << 10);
    let scripts: Vec<PhaseScripts> = (0..12)
        .map(|i| {
            let path = dir.join(format!("s{i}.lua"));
            std::fs::write(
                &path,
                format!("local s = '{filler}'\nngx.say({i}, ' ', #s)\n"),
            )
            .unwrap();
            PhaseScripts::content(path)
        })
        .collect();
    for (i, scripts) in scripts.iter().enumerate() {
        let handlers = load(&cache, scripts, &dir);
        assert!(handlers.content.as_ref().unwrap().binary);
        assert_eq!(serve(&handlers).1, format!("{i} {}\n", 400 << 10));
        let stats = cache.stats();
        assert!(stats.bytes <= BOUND, "{stats:?}");
    }
    assert_eq!(cache.compiles(), 12);
    let stats = cache.stats();
    assert!(
        (3..12).contains(&stats.scripts) && stats.bytes > BOUND / 2,
        "{stats:?}"
    );
    // The last one is still kept; the first was dropped, and serves again.
    load(&cache, &scripts[11], &dir);
    assert_eq!(cache.compiles(), 12);
    assert_eq!(
        serve(&load(&cache, &scripts[0], &dir)).1,
        format!("0 {}\n", 400 << 10)
    );
    assert_eq!(cache.compiles(), 13);
    assert!(cache.stats().bytes <= BOUND);
}
