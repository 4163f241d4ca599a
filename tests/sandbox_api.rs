//! The library API end to end: Lua's error semantics inside the sandbox, the
//! sandbox's standard library, every limit, and a long series of runs.

use crate::common;

use std::time::Duration;

use common::{run, run_with, sandbox, stdout_of, test_limits};
use moonwall::{EngineSettings, Limit, Limits, Outcome, Program, Sandbox};

fn lua_error(source: &str) -> (String, String) {
    match run(source).0.outcome {
        Outcome::LuaError { message, traceback } => (message, traceback),
        other => panic!("expected a Lua error, got {other:?}"),
    }
}

fn limit_of(source: &str, limits: &Limits) -> Limit {
    let (report, output) = run_with(source, limits);
    match report.outcome {
        Outcome::LimitExceeded(limit) => limit,
        other => panic!(
            "expected a limit, got {other:?}; stdout: {}",
            String::from_utf8_lossy(&output.stdout)
        ),
    }
}

// ---- error semantics -------------------------------------------------------

#[test]
fn pcall_returns_the_error_with_its_position() {
    let out = stdout_of(
        "print(pcall(error, 'plain'))\n\
         print(pcall(function() error('boom') end))\n\
         print(pcall(function() error('no position', 0) end))\n\
         local function callee() error('blame the caller', 2) end\n\
         print(pcall(function()\n callee()\n end))",
    );
    assert_eq!(
        out,
        "false\tplain\nfalse\tt.lua:2: boom\nfalse\tno position\nfalse\tt.lua:6: blame the caller\n"
    );
}

#[test]
fn error_objects_pass_through_pcall_unchanged() {
    let out = stdout_of(
        "local e = {code = 42}\n\
         local ok, got = pcall(error, e)\n\
         print(ok, got == e, got.code)\n\
         print(pcall(error))\n\
         print(select('#', pcall(error, nil)))",
    );
    assert_eq!(out, "false\ttrue\t42\nfalse\tnil\n2\n");
}

#[test]
fn xpcall_runs_its_handler_with_a_traceback() {
    let out = stdout_of(
        "local ok, tb = xpcall(function() local x = nil; return x.field end, debug.traceback)\n\
         print(ok)\n\
         print(tb:match('^t.lua:1: attempt to index a nil value') ~= nil)\n\
         print(tb:find('stack traceback:', 1, true) ~= nil)\n\
         print(xpcall(function(a, b) return a + b end, print, 2, 3))\n\
         print(xpcall(error, function(m) return 'handled: ' .. m end, 'oops', 0))",
    );
    assert_eq!(out, "false\ntrue\ntrue\ntrue\t5\nfalse\thandled: oops\n");
}

#[test]
fn errors_inside_coroutines_stay_inside_them() {
    let out = stdout_of(
        "local co = coroutine.create(function() error('in coroutine') end)\n\
         print(coroutine.resume(co))\n\
         print(coroutine.status(co))\n\
         local gen = coroutine.wrap(function() coroutine.yield(1) error({tag = 'wrapped'}) end)\n\
         print(gen())\n\
         local ok, e = pcall(gen)\n\
         print(ok, e.tag)\n\
         print(pcall(gen))\n\
         local co2 = coroutine.create(function() coroutine.yield() end)\n\
         coroutine.resume(co2)\n\
         print(coroutine.close(co2), coroutine.status(co2))",
    );
    assert_eq!(
        out,
        "false\tt.lua:1: in coroutine\ndead\n1\nfalse\twrapped\nfalse\tcannot resume dead coroutine\ntrue\tdead\n"
    );
}

#[test]
fn coroutines_yield_across_pcall() {
    let out = stdout_of(
        "local co = coroutine.wrap(function()\n\
           local ok, e = pcall(function()\n\
             local got = coroutine.yield('first')\n\
             error('after ' .. got)\n\
           end)\n\
           coroutine.yield(ok, e)\n\
           return 'done'\n\
         end)\n\
         print(co())\n\
         print(co('resumed'))\n\
         print(co())",
    );
    assert_eq!(out, "first\nfalse\tt.lua:4: after resumed\ndone\n");
}

#[test]
fn to_be_closed_variables_close_on_exit_and_on_error() {
    let out = stdout_of(
        "local function closer(name)\n\
           return setmetatable({}, {__close = function(_, err) print('close', name, err) end})\n\
         end\n\
         do local a <close> = closer('a') local b <close> = closer('b') end\n\
         print(pcall(function() local c <close> = closer('c') error('fail', 0) end))\n\
         local ok, e = pcall(function() local x <close> = 42 end)\n\
         print(ok, e)",
    );
    assert_eq!(
        out,
        "close\tb\tnil\nclose\ta\tnil\nclose\tc\tfail\nfalse\tfail\nfalse\tt.lua:6: variable 'x' got a non-closable value\n"
    );
}

#[test]
fn an_uncaught_error_reports_message_and_traceback() {
    let (message, traceback) =
        lua_error("local x = 1\nlocal function f() error('boom') end\nf()\n");
    assert_eq!(message, "t.lua:2: boom");
    assert!(traceback.starts_with("stack traceback:"), "{traceback}");
    assert!(traceback.contains("t.lua:2: in "), "{traceback}");
    assert!(traceback.contains("t.lua:3: in main chunk"), "{traceback}");
}

#[test]
fn uncaught_error_objects_are_described() {
    let (message, _) = lua_error("error({})");
    assert_eq!(message, "(error object is a table value)");
    let (message, _) =
        lua_error("error(setmetatable({}, {__tostring = function() return 'custom' end}))");
    assert_eq!(message, "custom");
    let (message, _) =
        lua_error("local gen = coroutine.wrap(function() error('from wrap') end)\ngen()");
    // As in Lua 5.4, coroutine.wrap adds the position of the call.
    assert_eq!(message, "t.lua:2: t.lua:1: from wrap");
}

#[test]
fn syntax_errors_name_chunk_and_line() {
    let (report, _) = run("local x = 1\nlocal y = = 2\n");
    assert_eq!(
        report.outcome,
        Outcome::SyntaxError {
            message: "t.lua:2: unexpected symbol near '='".into()
        }
    );
}

#[test]
fn script_arguments_and_preludes() {
    let program = Program::default()
        .prelude("(command line)", "_soft = true")
        .then_script("args.lua", "print(_soft, arg[0], select('#', ...), ...)")
        .with_args(vec!["one".into(), "two".into()]);
    let (report, output) = sandbox().run_captured(&program, &test_limits()).unwrap();
    assert_eq!(report.outcome, Outcome::Completed);
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        "true\targs.lua\t2\tone\ttwo\n"
    );

    let program = Program::default()
        .prelude("(command line)", "x = = 1")
        .then_script("s.lua", "");
    let (report, _) = sandbox().run_captured(&program, &test_limits()).unwrap();
    assert!(
        matches!(report.outcome, Outcome::SyntaxError { message } if message.starts_with("(command line):1:"))
    );
}

#[test]
fn warnings_go_to_stderr_when_enabled() {
    let (report, output) = run("warn('hidden') warn('@on') warn('shown ', 'twice') print('out')");
    assert_eq!(report.outcome, Outcome::Completed);
    assert_eq!(String::from_utf8(output.stdout).unwrap(), "out\n");
    assert_eq!(
        String::from_utf8(output.stderr).unwrap(),
        "Lua warning: shown twice\n"
    );
}

// ---- the sandbox's standard library ----------------------------------------

#[test]
fn only_the_sandbox_libraries_are_present() {
    let out = stdout_of(
        "print(type(io), type(package), type(require), dofile, loadfile, collectgarbage ~= nil)\n\
         local function keys(t) local k = {} for name in pairs(t) do k[#k + 1] = name end table.sort(k) return table.concat(k, ',') end\n\
         print(keys(os))\n\
         print(keys(debug))\n\
         print(type(string.format), type(table.move), type(math.tointeger), type(utf8.char), type(coroutine.close))",
    );
    assert_eq!(
        out,
        "table\ttable\tfunction\tnil\tnil\ttrue\nclock,date,difftime,getenv,time\ntraceback\nfunction\tfunction\tfunction\tfunction\tfunction\n"
    );
}

#[test]
fn binary_chunks_are_refused_everywhere() {
    let out = stdout_of(
        "print(pcall(string.dump, function() end))\n\
         local bytecode = '\\27Lua' .. string.rep('\\0', 32)\n\
         print(load(bytecode))\n\
         print(load('return 1', 'chunk', 'b'))\n\
         local parts = {'\\27Lua', string.rep('\\0', 32)}\n\
         local i = 0\n\
         print(load(function() i = i + 1 return parts[i] end))\n\
         print(load('return 1 + 1', 'text', 'bt')())",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "false\tstring.dump is not available in the moonwall sandbox (binary chunks cannot be loaded back either)"
    );
    let refused = "nil\tbinary chunks are not allowed in the moonwall sandbox (only Lua source text is loaded)";
    assert_eq!(lines[1], refused);
    assert_eq!(lines[2], refused);
    assert_eq!(
        lines[3],
        "nil\tattempt to load a binary chunk (mode is 't')"
    );
    assert_eq!(lines[4], "2");
}

#[test]
fn a_binary_script_file_is_refused() {
    let (report, _) = run("\x1bLua\x54\x00");
    assert!(
        matches!(&report.outcome, Outcome::SyntaxError { message } if message.contains("attempt to load a binary chunk")),
        "{:?}",
        report.outcome
    );
}

#[test]
fn load_runs_text_with_its_own_environment() {
    let out = stdout_of(
        "local env = {x = 5}\nprint(load('return x', 'c', 't', env)(), load('return x')())",
    );
    assert_eq!(out, "5\tnil\n");
}

#[test]
fn os_functions_work_without_touching_the_host() {
    let out = stdout_of(
        "print(os.time() > 1700000000, math.type(os.time()))\n\
         print(os.date('!%Y-%m-%d %H:%M:%S', 86400))\n\
         print(os.time({year = 2000, month = 1, day = 1, hour = 0}))\n\
         print(os.difftime(10, 4), type(os.clock()))",
    );
    assert_eq!(
        out,
        "true\tinteger\n1970-01-02 00:00:00\n946684800\n6.0\tnumber\n"
    );
}

#[test]
fn the_guest_imports_only_the_moonwall_interfaces() {
    let mut imports = sandbox().guest_imports();
    imports.sort();
    assert_eq!(
        imports,
        [
            "moonwall:sandbox/clock@0.1.0",
            "moonwall:sandbox/codec@0.1.0",
            "moonwall:sandbox/env@0.1.0",
            "moonwall:sandbox/files@0.1.0",
            "moonwall:sandbox/guard@0.1.0",
            "moonwall:sandbox/http-types@0.1.0",
            "moonwall:sandbox/log@0.1.0",
            "moonwall:sandbox/output@0.1.0",
            "moonwall:sandbox/regex@0.1.0",
            "moonwall:sandbox/response@0.1.0",
            "moonwall:sandbox/shared-dict@0.1.0",
            "moonwall:sandbox/tasks@0.1.0",
            "moonwall:sandbox/tcp@0.1.0",
            "moonwall:sandbox/upstream@0.1.0",
        ]
    );
}

// ---- limits ------------------------------------------------------------------

#[test]
fn fuel_stops_a_runaway_loop_and_pcall_cannot_catch_it() {
    let limits = Limits {
        fuel: 5_000_000,
        ..test_limits()
    };
    let (report, output) = run_with(
        "print(pcall(function() while true do end end))\nprint('escaped')",
        &limits,
    );
    assert_eq!(
        report.outcome,
        Outcome::LimitExceeded(Limit::Fuel { limit: 5_000_000 })
    );
    assert_eq!(report.fuel_used, 5_000_000);
    assert!(output.stdout.is_empty());
}

#[test]
fn no_handler_sees_a_limit() {
    let limits = Limits {
        fuel: 5_000_000,
        ..test_limits()
    };
    for source in [
        "xpcall(function() while true do end end, function() print('handler') end)",
        "local co = coroutine.create(function() while true do end end) print(coroutine.resume(co))",
        "local f = coroutine.wrap(function() while true do end end) print(pcall(f))",
        "setmetatable({}, {__gc = function() print('finalizer ran') end}) while true do end",
        "do local x <close> = setmetatable({}, {__close = function() print('closed') end}) while true do end end",
    ] {
        let (report, output) = run_with(source, &limits);
        assert_eq!(
            report.outcome,
            Outcome::LimitExceeded(Limit::Fuel { limit: 5_000_000 }),
            "{source}"
        );
        assert!(
            output.stdout.is_empty(),
            "{source}: {}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
}

#[test]
fn limits_still_apply_while_finalizers_run_at_the_end() {
    let fuel = Limits {
        fuel: 5_000_000,
        ..test_limits()
    };
    let (report, output) = run_with(
        "setmetatable({}, {__gc = function() while true do end end}) print('main chunk done')",
        &fuel,
    );
    assert_eq!(
        report.outcome,
        Outcome::LimitExceeded(Limit::Fuel { limit: 5_000_000 })
    );
    assert_eq!(output.stdout, b"main chunk done\n");

    let memory = Limits {
        memory_bytes: 8 << 20,
        ..test_limits()
    };
    let (report, _) = run_with(
        "setmetatable({}, {__gc = function() local t = {} while true do t[#t + 1] = {} end end})",
        &memory,
    );
    assert_eq!(
        report.outcome,
        Outcome::LimitExceeded(Limit::Memory {
            limit_bytes: 8 << 20
        })
    );
}

#[test]
fn the_time_limit_stops_a_run_that_has_fuel_to_spare() {
    let limits = Limits {
        fuel: u64::MAX / 2,
        timeout: Duration::from_millis(100),
        ..test_limits()
    };
    let limit = limit_of("local n = 0 while true do n = n + 1 end", &limits);
    assert_eq!(
        limit,
        Limit::Time {
            limit: Duration::from_millis(100)
        }
    );
    assert_eq!(limit.to_string(), "time limit of 100 ms exceeded");
}

#[test]
fn the_memory_limit_cannot_be_caught() {
    let limits = Limits {
        memory_bytes: 8 << 20,
        ..test_limits()
    };
    for source in [
        "local t = {} while true do t[#t + 1] = string.rep('x', 1000) .. #t end",
        "print(pcall(function() local t = {} while true do t[#t + 1] = {} end end)) print('escaped')",
        "local co = coroutine.wrap(function() local s = 'x' while true do s = s .. s end end) print(pcall(co))",
        "print(pcall(string.rep, 'x', 100 * 1024 * 1024))",
    ] {
        let (report, output) = run_with(source, &limits);
        assert_eq!(
            report.outcome,
            Outcome::LimitExceeded(Limit::Memory {
                limit_bytes: 8 << 20
            }),
            "{source}"
        );
        assert!(output.stdout.is_empty(), "{source}");
        assert!(report.peak_memory_bytes <= 8 << 20);
    }
}

#[test]
fn garbage_is_collected_before_the_memory_limit_is_declared() {
    // Allocates far more than the cap in total, but little at any one time.
    let limits = Limits {
        memory_bytes: 8 << 20,
        ..test_limits()
    };
    let (report, output) = run_with(
        "local chunk = string.rep('x', 100000)\nfor i = 1, 500 do local s = chunk .. i end print('ok')",
        &limits,
    );
    assert_eq!(report.outcome, Outcome::Completed);
    assert_eq!(output.stdout, b"ok\n");
}

#[test]
fn a_memory_cap_too_small_to_start_is_the_memory_limit() {
    let limits = Limits {
        memory_bytes: Limits::MIN_MEMORY_MIB << 20,
        ..test_limits()
    };
    // 2 MiB starts; the guest then allocates past it.
    let limit = limit_of("local t = {} for i = 1, 1e6 do t[i] = i end", &limits);
    assert_eq!(
        limit,
        Limit::Memory {
            limit_bytes: 2 << 20
        }
    );
}

#[test]
fn the_output_limit_passes_on_exactly_the_cap() {
    let limits = Limits {
        output_bytes: 1000,
        ..test_limits()
    };
    let (report, output) = run_with("while true do print('0123456789') end", &limits);
    assert_eq!(
        report.outcome,
        Outcome::LimitExceeded(Limit::Output { limit_bytes: 1000 })
    );
    assert_eq!(output.stdout.len(), 1000);
    assert!(output.stdout.starts_with(b"0123456789\n0123456789\n"));
}

#[test]
fn the_native_stack_limit_stops_deep_c_recursion() {
    // A sandbox whose native stack is far smaller than Lua's own C-level
    // recursion limit needs: the wasm stack check fires first.
    let settings = EngineSettings {
        max_wasm_stack_bytes: 64 * 1024,
        max_instances: 2,
        cache_dir: Some(common::cache_dir()),
        ..EngineSettings::default()
    };
    let small = Sandbox::new(settings).unwrap();
    let program = Program::script(
        "deep.lua",
        "local function f(n) if n > 0 then pcall(f, n - 1) end end f(190) print('done')",
    );
    let (report, output) = small.run_captured(&program, &test_limits()).unwrap();
    assert_eq!(
        report.outcome,
        Outcome::LimitExceeded(Limit::NativeStack {
            limit_bytes: 64 * 1024
        })
    );
    assert!(output.stdout.is_empty());

    // The default stack leaves Lua's own limit in charge.
    let (report, output) = common::run(
        "local function f(n) if n > 0 then pcall(f, n - 1) end end f(190) print('done')\n\
         local function g() local ok, e = pcall(g) if not ok then error(e, 0) end end\n\
         print(pcall(g))",
    );
    assert_eq!(report.outcome, Outcome::Completed);
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.starts_with("done\nfalse\t") && stdout.contains("stack overflow"),
        "{stdout}"
    );
}

#[test]
fn a_limit_reached_while_the_guest_starts_is_still_a_limit() {
    // 100 units of fuel cannot even run the guest's start-up code.
    let limit = limit_of(
        "print('never')",
        &Limits {
            fuel: 100,
            ..test_limits()
        },
    );
    assert_eq!(limit, Limit::Fuel { limit: 100 });
}

#[test]
fn invalid_limits_are_refused_before_running() {
    let program = Program::script("t.lua", "");
    for limits in [
        Limits {
            fuel: 0,
            ..test_limits()
        },
        Limits {
            timeout: Duration::ZERO,
            ..test_limits()
        },
        Limits {
            memory_bytes: 1 << 20,
            ..test_limits()
        },
    ] {
        assert!(
            sandbox().run_captured(&program, &limits).is_err(),
            "{limits:?}"
        );
    }
}

#[test]
fn reports_fuel_and_peak_memory() {
    let (small, _) = run("local x = 1");
    let (large, _) = run("local t = {} for i = 1, 200000 do t[i] = i end");
    assert_eq!(small.outcome, Outcome::Completed);
    assert!(small.fuel_used > 0 && small.fuel_used < large.fuel_used);
    assert!(
        small.peak_memory_bytes >= 1 << 20,
        "the guest's stack alone is 1 MiB"
    );
    assert!(large.peak_memory_bytes > small.peak_memory_bytes + (2 << 20));
}

// ---- isolation and endurance -------------------------------------------------

#[test]
fn runs_share_no_state() {
    assert_eq!(
        stdout_of("leaked = 'secret' string.secret = 1 print(leaked)"),
        "secret\n"
    );
    assert_eq!(stdout_of("print(leaked, string.secret)"), "nil\tnil\n");
}

#[test]
fn one_process_survives_thousands_of_failing_runs() {
    let normal = "local t = {} for i = 1, 100 do t[i] = i * i end print(t[100], #t)";
    type Case = (&'static str, Limits, fn(&Outcome) -> bool);
    let cases: [Case; 6] = [
        (
            "while true do end",
            Limits {
                fuel: 200_000,
                ..test_limits()
            },
            |o| matches!(o, Outcome::LimitExceeded(Limit::Fuel { .. })),
        ),
        (
            "while true do end",
            Limits {
                fuel: u64::MAX / 2,
                timeout: Duration::from_millis(2),
                ..test_limits()
            },
            |o| matches!(o, Outcome::LimitExceeded(Limit::Time { .. })),
        ),
        (
            "local s = 'x' while true do s = s .. s end",
            Limits {
                memory_bytes: 4 << 20,
                ..test_limits()
            },
            |o| matches!(o, Outcome::LimitExceeded(Limit::Memory { .. })),
        ),
        (
            "while true do print('x') end",
            Limits {
                output_bytes: 100,
                ..test_limits()
            },
            |o| matches!(o, Outcome::LimitExceeded(Limit::Output { .. })),
        ),
        ("error('boom')", test_limits(), |o| {
            matches!(o, Outcome::LuaError { .. })
        }),
        ("local = 1", test_limits(), |o| {
            matches!(o, Outcome::SyntaxError { .. })
        }),
    ];
    for round in 0..2100 {
        let (source, limits, expected) = &cases[round % cases.len()];
        let (report, _) = run_with(source, limits);
        assert!(
            expected(&report.outcome),
            "round {round}: {source} gave {:?}",
            report.outcome
        );
        if round % 10 == 0 {
            assert_eq!(stdout_of(normal), "10000\t100\n", "round {round}");
        }
    }
    assert_eq!(stdout_of(normal), "10000\t100\n");
}

#[test]
fn a_scripted_memory_error_is_an_ordinary_error() {
    // Lua turns error("not enough memory") into its memory-error status; only
    // a real failed allocation may end the run.
    let out = stdout_of(
        "print(pcall(error, 'not enough memory', 0))\n\
         local co = coroutine.create(function() error('not enough memory', 0) end)\n\
         print(coroutine.resume(co))",
    );
    assert_eq!(out, "false\tnot enough memory\nfalse\tnot enough memory\n");

    // Even after a refused growth that Lua's emergency collection recovered from.
    let limits = Limits {
        memory_bytes: 8 << 20,
        ..test_limits()
    };
    let (report, output) = run_with(
        "collectgarbage('stop')\n\
         local block = string.rep('k', 1024)\n\
         for i = 1, 8 do local garbage = string.rep(block, 3 * 1024) end\n\
         print(pcall(error, 'not enough memory', 0))",
        &limits,
    );
    assert_eq!(report.outcome, Outcome::Completed);
    assert_eq!(output.stdout, b"false\tnot enough memory\n");
}

#[test]
fn an_allocation_larger_than_wasm32_can_hold_is_the_memory_limit() {
    let limits = Limits {
        memory_bytes: 16 << 20,
        ..test_limits()
    };
    let limit = limit_of("print(pcall(string.rep, 'x', 2^31 - 1000))", &limits);
    assert_eq!(
        limit,
        Limit::Memory {
            limit_bytes: 16 << 20
        }
    );
}

#[test]
fn the_ngx_util_module_passes_its_spec() {
    // guest-lua/lua/ngx_util.lua is the pure-Lua half of the ngx API; its
    // spec (tests/lua/ngx_util_spec.lua) checks it against OpenResty's
    // documented results.
    let util = include_str!("../guest-lua/lua/ngx_util.lua");
    let spec = include_str!("lua/ngx_util_spec.lua");
    let program = Program::default()
        .prelude("ngx_util", format!("ngx_util = (function() {util}\nend)()"))
        .then_script("ngx_util_spec.lua", spec);
    let limits = Limits {
        fuel: 20_000_000_000,
        ..test_limits()
    };
    let (report, output) = sandbox().run_captured(&program, &limits).unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(report.outcome, Outcome::Completed, "{stdout}");
    assert!(stdout.trim_end().ends_with("ok 230"), "{stdout}");
}
