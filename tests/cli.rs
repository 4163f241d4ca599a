//! The command line as users and scripts call it: output, exit codes and the
//! messages on stderr of `moonwall exec`, `moonwall request` and `moonwall serve`.

use crate::common;

use std::path::PathBuf;
use std::process::{Command, Output};

fn script(name: &str, source: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("exec-cli");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, source).unwrap();
    path
}

fn moonwall(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moonwall"))
        .args(args)
        .env("MOONWALL_CACHE_DIR", common::cache_dir())
        .output()
        .expect("moonwall runs")
}

fn exec(flags: &[&str], name: &str, source: &str) -> (i32, String, String) {
    let path = script(name, source);
    let mut args = vec!["exec"];
    args.extend_from_slice(flags);
    args.push(path.to_str().unwrap());
    let output = moonwall(&args);
    (
        output.status.code().expect("an exit code"),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_completed_script_exits_0_with_its_output() {
    let (code, stdout, stderr) = exec(&[], "hello.lua", "print('hello', 1 + 1)");
    assert_eq!(
        (code, stdout.as_str(), stderr.as_str()),
        (0, "hello\t2\n", "")
    );
}

#[test]
fn arguments_and_eval_chunks_reach_the_script() {
    let path = script("args.lua", "print(greeting, ...)");
    let output = moonwall(&[
        "exec",
        "-e",
        "greeting = 'hi'",
        path.to_str().unwrap(),
        "a",
        "-b",
    ]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "hi\ta\t-b\n");
}

#[test]
fn a_lua_error_exits_1_with_file_line_and_traceback() {
    let (code, stdout, stderr) = exec(&[], "boom.lua", "print('before')\nerror('boom')\n");
    assert_eq!(code, 1);
    assert_eq!(stdout, "before\n");
    let path = script("boom.lua", "print('before')\nerror('boom')\n");
    let file = path.display();
    assert!(
        stderr.starts_with(&format!("error: {file}:2: boom\nstack traceback:\n")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{file}:2: in main chunk")),
        "{stderr}"
    );
}

#[test]
fn a_syntax_error_exits_1_with_file_and_line() {
    let (code, _, stderr) = exec(&[], "syntax.lua", "local x = 1\nif x then\n");
    assert_eq!(code, 1);
    let file = script("syntax.lua", "local x = 1\nif x then\n")
        .display()
        .to_string();
    assert_eq!(
        stderr,
        format!("error: {file}:3: 'end' expected (to close 'if' at line 2) near <eof>\n")
    );
}

#[test]
fn each_limit_exits_3_naming_the_limit_and_its_value() {
    let cases: [(&[&str], &str, &str); 6] = [
        (
            &["--fuel", "100000000"],
            "while true do end",
            "error: fuel limit of 100000000 exhausted\n",
        ),
        (
            &["--fuel", "100000000000000", "--timeout-ms", "200"],
            "while true do end",
            "error: time limit of 200 ms exceeded\n",
        ),
        (
            &["--memory-mib", "16"],
            "local t = {} while true do t[#t + 1] = {} end",
            "error: memory limit of 16 MiB exceeded\n",
        ),
        (
            &["--memory-mib", "16"],
            "print(pcall(function() local s = 'x' while true do s = s .. s end end))",
            "error: memory limit of 16 MiB exceeded\n",
        ),
        (
            &["--max-output-kib", "1"],
            "while true do print('spam') end",
            "error: output limit of 1 KiB exceeded\n",
        ),
        (
            &["--max-stack-kib", "64"],
            "local function f(n) if n > 0 then pcall(f, n - 1) end end f(190)",
            "error: native stack limit of 64 KiB exceeded\n",
        ),
    ];
    for (flags, source, message) in cases {
        let (code, stdout, stderr) = exec(flags, "limit.lua", source);
        assert_eq!((code, stderr.as_str()), (3, message), "{flags:?} {source}");
        if message.contains("output") {
            assert_eq!(stdout.len(), 1024);
        }
    }
}

#[test]
fn stats_report_fuel_memory_and_time() {
    let (code, _, stderr) = exec(&["--stats"], "stats.lua", "local x = 1");
    assert_eq!(code, 0);
    assert!(stderr.starts_with("stats: fuel used "), "{stderr}");
    assert!(
        stderr.contains("peak memory") && stderr.contains(" ms"),
        "{stderr}"
    );
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        vec!["exec"],
        vec!["exec", "--fuel", "lots", "x.lua"],
        vec!["exec", "--fuel", "0", "x.lua"],
        vec!["exec", "--memory-mib", "1", "x.lua"],
        vec!["exec", "--memory-mib", "5000", "x.lua"],
        vec!["exec", "--no-such-flag", "x.lua"],
        vec!["frobnicate"],
    ] {
        let output = moonwall(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("error:"),
            "{args:?}"
        );
    }
    let output = moonwall(&["exec", "/no/such/dir/script.lua"]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "error: cannot read /no/such/dir/script.lua: No such file or directory (os error 2)\n"
    );
}

#[test]
fn help_documents_the_exit_codes() {
    let output = moonwall(&["exec", "--help"]);
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "--fuel",
        "--timeout-ms",
        "--memory-mib",
        "--max-output-kib",
        "--max-stack-kib",
        "Exit codes:",
        "3  stopped by a limit",
    ] {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
}

// ---- moonwall request ---------------------------------------------------------

#[test]
fn request_prints_the_response_and_exits_0() {
    let content = script(
        "request_content.lua",
        "ngx.req.read_body()\nngx.header['X-Method'] = ngx.req.get_method()\n\
         ngx.say(ngx.var.uri, ' ', ngx.var.arg_q, ' ', ngx.var.http_x_test, ' ', ngx.req.get_body_data())",
    );
    let access = script(
        "request_access.lua",
        "if ngx.var.arg_q == 'deny' then ngx.exit(403) end",
    );
    let output = moonwall(&[
        "request",
        "--access",
        access.to_str().unwrap(),
        "--content",
        content.to_str().unwrap(),
        "-X",
        "POST",
        "-H",
        "X-Test: yes",
        "--data",
        "payload",
        "/path?q=1",
    ]);
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.starts_with("HTTP/1.1 200 OK\r\n"), "{stdout}");
    assert!(stdout.contains("x-method: POST\r\n"), "{stdout}");
    assert!(
        stdout.ends_with("\r\n\r\n/path 1 yes payload\n"),
        "{stdout}"
    );

    let denied = moonwall(&[
        "request",
        "--access",
        access.to_str().unwrap(),
        "--content",
        content.to_str().unwrap(),
        "/p?q=deny",
    ]);
    assert_eq!(denied.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&denied.stdout).starts_with("HTTP/1.1 403 Forbidden\r\n"));
}

#[test]
fn request_answers_500_and_503_and_still_exits_0() {
    let error = script("request_error.lua", "error('boom')");
    let output = moonwall(&["request", "--content", error.to_str().unwrap(), "/"]);
    assert_eq!(output.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&output.stdout)
            .starts_with("HTTP/1.1 500 Internal Server Error\r\n")
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("request_error.lua:1: boom"));

    let data = script("request_body.txt", "from a file");
    let echo = script(
        "request_echo.lua",
        "ngx.req.read_body() ngx.print(ngx.req.get_body_data())",
    );
    let output = moonwall(&[
        "request",
        "--content",
        echo.to_str().unwrap(),
        "--data",
        &format!("@{}", data.display()),
        "/",
    ]);
    assert!(String::from_utf8_lossy(&output.stdout).ends_with("\r\n\r\nfrom a file"));

    let looping = script("request_loop.lua", "while true do end");
    let output = moonwall(&[
        "request",
        "--fuel",
        "1000000",
        "--content",
        looping.to_str().unwrap(),
        "/",
    ]);
    assert_eq!(output.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&output.stdout).starts_with("HTTP/1.1 503 Service Unavailable\r\n")
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("fuel limit of 1000000 exhausted"));
}

/// 1xx statuses (an upgrade to 101, interim responses) belong to the
/// connection: a script that asks for one gets an error, the client a 500.
#[test]
fn request_refuses_informational_statuses_from_scripts() {
    for status in [100, 101, 103, 199] {
        let upgrade = script(
            &format!("request_status_{status}.lua"),
            &format!("ngx.status = {status} ngx.header['Upgrade'] = 'websocket' ngx.say('hi')"),
        );
        let output = moonwall(&["request", "--content", upgrade.to_str().unwrap(), "/"]);
        assert_eq!(output.status.code(), Some(0));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.starts_with("HTTP/1.1 500 Internal Server Error\r\n"),
            "{status}: {stdout}"
        );
        assert!(!stdout.contains("hi"), "{status}: {stdout}");
        assert!(
            String::from_utf8_lossy(&output.stderr)
                .contains(&format!("invalid response status {status}")),
            "{status}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let ok = script("request_status_200.lua", "ngx.status = 200 ngx.say('hi')");
    let output = moonwall(&["request", "--content", ok.to_str().unwrap(), "/"]);
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("HTTP/1.1 200 OK\r\n"));
}

/// A script's response headers are bounded (256 headers, 64 KiB of names
/// and values), with the same messages since they cross as one header block
/// (wit/http.wit): the script gets an error, the client a 500.
#[test]
fn request_bounds_response_headers() {
    let cases = [
        (
            "many",
            "for i = 1, 257 do ngx.header['X-H' .. i] = 'v' end",
            Some("too many response headers (at most 256)"),
        ),
        (
            "large",
            "ngx.header['X-Big'] = string.rep('v', 65537)",
            Some("response headers too large (at most 65536 bytes)"),
        ),
        (
            "within",
            "for i = 1, 200 do ngx.header['X-H' .. i] = string.rep('v', 300) end",
            None,
        ),
    ];
    for (name, headers, refused) in cases {
        let path = script(
            &format!("request_headers_{name}.lua"),
            &format!("{headers} ngx.say('hi')"),
        );
        let output = moonwall(&["request", "--content", path.to_str().unwrap(), "/"]);
        assert_eq!(output.status.code(), Some(0));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        match refused {
            Some(message) => {
                assert!(
                    stdout.starts_with("HTTP/1.1 500 Internal Server Error\r\n"),
                    "{name}: {stdout}"
                );
                assert!(!stdout.contains("hi"), "{name}: {stdout}");
                assert!(stderr.contains(message), "{name}: {stderr}");
            }
            None => {
                assert!(
                    stdout.starts_with("HTTP/1.1 200 OK\r\n"),
                    "{name}: {stdout}"
                );
                assert!(stdout.contains("x-h200: vvv"), "{name}: {stdout}");
                assert!(stdout.ends_with("\r\n\r\nhi\n"), "{name}: {stdout}");
            }
        }
    }
}

#[test]
fn request_and_serve_usage_errors_exit_2() {
    for args in [
        vec!["request", "--content", "/no/such/script.lua", "/"],
        vec!["request", "-H", "no colon", "/"],
        vec!["request", "--data", "@/no/such/body", "/"],
        vec!["request", "/%zz"],
        vec!["serve"],
        vec!["serve", "--root", "/no/such/dir"],
        vec!["serve", "--config", "/no/such/site.toml"],
        vec!["serve", "--root", ".", "--config", "x.toml"],
    ] {
        let output = moonwall(&args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("error"),
            "{args:?}"
        );
    }
    let config = script("bad_site.toml", "[[location]]\npath = \"/\"\ncontent = 5\n");
    let output = moonwall(&["serve", "--config", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("{}:3:11: invalid type", config.display())),
        "{stderr}"
    );
}

#[test]
fn the_log_phase_runs_after_a_limit_in_a_fresh_instance() {
    let looping = script(
        "limit_content.lua",
        "ngx.ctx.lost = true\nwhile true do end",
    );
    let log = script(
        "limit_log.lua",
        "ngx.log(ngx.ERR, 'log phase ran: status ', ngx.status, ' ctx ', tostring(ngx.ctx.lost))",
    );
    let output = moonwall(&[
        "request",
        "--fuel",
        "2000000000",
        "--content",
        looping.to_str().unwrap(),
        "--log",
        log.to_str().unwrap(),
        "/",
    ]);
    assert_eq!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("HTTP/1.1 503"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("fuel limit of 2000000000 exhausted"),
        "{stderr}"
    );
    // The request's own instance was stopped: ngx.ctx did not survive.
    assert!(
        stderr.contains("log phase ran: status 503 ctx nil"),
        "{stderr}"
    );
}

#[test]
fn serve_logs_json_and_shuts_down_on_sigterm() {
    use std::io::{BufRead, BufReader, Read, Write};
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("serve-json");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("index.lua"),
        "ngx.log(ngx.WARN, 'hello from the script') ngx.say('hi')",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_moonwall"))
        .args([
            "serve",
            "--root",
            dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .env("MOONWALL_CACHE_DIR", common::cache_dir())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let address = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the listening line")
        .to_string();
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");

    let terminated = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(terminated.success());
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    let lines: Vec<&str> = std::iter::once(line.as_str()).chain(rest.lines()).collect();
    for line in &lines {
        assert!(
            line.trim_start().starts_with('{') && line.trim_end().ends_with('}'),
            "not JSON: {line}"
        );
        // A script's fields never shadow the log's own keys.
        for key in ["\"target\":", "\"level\":", "\"timestamp\":"] {
            assert!(line.matches(key).count() <= 1, "{key} twice in {line}");
        }
    }
    let access = lines
        .iter()
        .find(|l| l.contains("\"target\":\"access\""))
        .expect("an access line");
    for field in [
        "\"status\":200",
        "\"outcome\":\"ok\"",
        "\"method\":\"GET\"",
        "\"path\":\"/\"",
        "\"fuel\":",
        "\"peak_memory_kib\":",
    ] {
        assert!(access.contains(field), "{field} missing from {access}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("index.lua:1: hello from the script")),
        "{lines:?}"
    );
}

#[test]
fn request_runs_under_a_policy_with_its_capabilities_and_limits() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("request-policy");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("www")).unwrap();
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(dir.join("data/greeting.txt"), "hello from a granted dir\n").unwrap();
    std::fs::write(
        dir.join("policy.toml"),
        "tenant = \"t\"\nroot = \"www\"\n\n[limits]\ntimeout_ms = 300\n\n\
         [capabilities]\nshared_dicts = { d = \"1m\" }\nread_dirs = [\"data\"]\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("www/t.lua"),
        "ngx.shared.d:set('k', 41) ngx.say(ngx.shared.d:incr('k', 1))\n\
         ngx.say(io.lines('greeting.txt')())\n\
         ngx.say(pcall(function() return ngx.shared.other end))\n",
    )
    .unwrap();
    std::fs::write(dir.join("www/slow.lua"), "ngx.sleep(5) ngx.say('never')\n").unwrap();
    let request = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_moonwall"))
            .arg("request")
            .args(args)
            .current_dir(&dir)
            .env("MOONWALL_CACHE_DIR", common::cache_dir())
            .output()
            .expect("moonwall runs")
    };
    let output = request(&["--policy", "policy.toml", "--content", "www/t.lua", "/"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.ends_with(
            "\r\n\r\n42\nhello from a granted dir\n\
             falsewww/t.lua:3: ngx.shared: no shared dict \"other\" (the policy grants: d; see [capabilities] shared_dicts)\n"
        ),
        "{stdout}"
    );
    // The policy's time limit applies (the flag's default is 5000 ms).
    let output = request(&["--policy", "policy.toml", "--content", "www/slow.lua", "/"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.starts_with("HTTP/1.1 503"), "{stdout}");
    // Without the policy nothing is granted.
    let output = request(&["--content", "www/t.lua", "/"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.starts_with("HTTP/1.1 500"), "{stdout}");
    // The policy's init script runs first (with the policy's grants); the
    // request starts from its state.
    std::fs::write(
        dir.join("init.toml"),
        "tenant = \"t\"\nroot = \"www\"\ninit_script = \"init.lua\"\n\n\
         [capabilities]\nshared_dicts = { d = \"1m\" }\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("www/init.lua"),
        "ngx.shared.d:set('k', 100) prepared = 'yes'\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("www/show.lua"),
        "ngx.say(prepared, ' ', ngx.shared.d:get('k'))\n",
    )
    .unwrap();
    let output = request(&["--policy", "init.toml", "--content", "www/show.lua", "/"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.ends_with("\r\n\r\nyes 100\n"), "{stdout}");
    // A broken policy is a usage error with its place.
    std::fs::write(
        dir.join("bad.toml"),
        "tenant = \"t\"\nroot = \"www\"\nfuel = 1\n",
    )
    .unwrap();
    let output = request(&["--policy", "bad.toml", "--content", "www/t.lua", "/"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("bad.toml:3:1: unknown field `fuel`"),
        "{stderr}"
    );
}

#[test]
fn logs_to_a_pipe_or_a_file_have_no_terminal_colours() {
    let error = script("request_colour.lua", "error('boom')");
    let output = moonwall(&["request", "--content", error.to_str().unwrap(), "/"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("request_colour.lua:1: boom"), "{stderr}");
    assert!(!stderr.contains('\x1b'), "{stderr:?}");
}

/// `moonwall serve` raises its soft limit on open files to the hard limit:
/// started with a soft limit of 256, it runs with the hard one.
#[test]
fn serve_raises_its_open_files_limit_to_the_hard_limit() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::CommandExt;
    let mut hard = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut hard) },
        0
    );
    if hard.rlim_max <= 256 {
        eprintln!("skipped: the hard limit on open files is {}", hard.rlim_max);
        return;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("serve-nofile");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.lua"), "ngx.say('hi')").unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_moonwall"));
    command
        .args([
            "serve",
            "--root",
            dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .env("MOONWALL_CACHE_DIR", common::cache_dir())
        .stderr(std::process::Stdio::piped());
    // SAFETY: between fork and exec the child only calls setrlimit, which
    // is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            limit.rlim_cur = 256;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let mut listening = false;
    for _ in 0..20 {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            break;
        }
        seen.push_str(&line);
        if line.contains("http://") {
            listening = true;
            break;
        }
    }
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(listening, "no listening line in {seen}");
    assert!(
        seen.contains(&format!("soft limit raised from 256 to {}", hard.rlim_max)),
        "{seen}"
    );
    let open_files = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no open-files line in {limits}"));
    let numbers: Vec<&str> = open_files.split_whitespace().skip(3).take(2).collect();
    let hard_text = hard.rlim_max.to_string();
    assert_eq!(
        numbers,
        [hard_text.as_str(), hard_text.as_str()],
        "{open_files}"
    );
}

#[test]
fn serve_runs_an_init_script_once_and_requests_start_from_its_state() {
    use std::io::{BufReader, Read, Write};
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("serve-init");
    std::fs::create_dir_all(&dir).unwrap();
    let init = dir.join("init.lua");
    std::fs::write(&init, "motd = 'from init'\nseen = 0\n").unwrap();
    std::fs::write(
        dir.join("index.lua"),
        "seen = seen + 1 ngx.say(motd, ' ', seen)",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_moonwall"))
        .args([
            "serve",
            "--root",
            dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--init-script", init.to_str().unwrap()])
        .env("MOONWALL_CACHE_DIR", common::cache_dir())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let (address, seen) = listening_address(&mut stderr);
    assert!(seen.contains("init script ran"), "{seen}");
    for _ in 0..2 {
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(
            response.starts_with("HTTP/1.1 200") && response.contains("from init 1\n"),
            "{response}"
        );
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));

    // An init script that fails stops the server from starting, saying where.
    std::fs::write(&init, "motd = 'x'\nerror('no config')\n").unwrap();
    let output = moonwall(&[
        "serve",
        "--root",
        dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--init-script",
        init.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("init script: init.lua:2: no config"),
        "{stderr}"
    );
}

/// `moonwall serve` takes the bounds on connections from a site config's
/// `[connections]` and from its flags, the flag winning: here the header
/// timeout from the file (a silent connection is closed), the cap per
/// client from the flag over the file's (a second connection is closed
/// unserved), and a value out of range is a usage error naming its place.
#[test]
fn serve_takes_connection_bounds_from_the_config_and_the_flags() {
    use std::io::{BufReader, Read, Write};
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("serve-connections");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hi.lua"), "ngx.say('hi')").unwrap();
    let config = dir.join("site.toml");
    std::fs::write(
        &config,
        "[connections]\nheader_timeout_ms = 1000\nmax_connections_per_client = 100\nsend_timeout_ms = 30000\n\n[[location]]\npath = \"/\"\ncontent = \"hi.lua\"\n",
    )
    .unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[connections]\nidle_timeout_ms = 0\n\n[[location]]\npath = \"/\"\ncontent = \"hi.lua\"\n",
    )
    .unwrap();
    let output = moonwall(&["serve", "--config", bad.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr
            .contains("bad.toml:2:19: [connections] idle_timeout_ms must be between 1 and 3600000"),
        "{stderr}"
    );
    let bad_send = dir.join("bad-send.toml");
    std::fs::write(
        &bad_send,
        "[connections]\nheader_timeout_ms = 1000\nsend_timeout_ms = 3600001\n\n[[location]]\npath = \"/\"\ncontent = \"hi.lua\"\n",
    )
    .unwrap();
    let output = moonwall(&["serve", "--config", bad_send.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "bad-send.toml:3:19: [connections] send_timeout_ms must be between 1 and 3600000"
        ),
        "{stderr}"
    );
    let config_arg = config.to_str().unwrap();
    let output = moonwall(&["serve", "--config", config_arg, "--send-timeout-ms", "0"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--send-timeout-ms"), "{stderr}");

    let mut child = Command::new(env!("CARGO_BIN_EXE_moonwall"))
        .args([
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--max-connections-per-client",
            "1",
            "--send-timeout-ms",
            "5000",
        ])
        .env("MOONWALL_CACHE_DIR", common::cache_dir())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let (address, _) = listening_address(&mut stderr);
    // Sends nothing: closed after the file's header timeout.
    let mut silent = std::net::TcpStream::connect(&address).unwrap();
    silent
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut byte = [0u8; 1];
    let silent_closed = match silent.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    };
    // One connection at a time from this address: a second is closed
    // unserved while the first is open (retried until the silent one's
    // place is given back).
    let ask = |stream: &mut std::net::TcpStream| -> String {
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        let mut got = vec![0u8; 4096];
        let n = stream.read(&mut got).unwrap_or(0);
        String::from_utf8_lossy(&got[..n]).into_owned()
    };
    let mut first = None;
    for _ in 0..100 {
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        if ask(&mut stream).starts_with("HTTP/1.1 200") {
            first = Some(stream);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let second = std::net::TcpStream::connect(&address)
        .map(|mut stream| ask(&mut stream))
        .unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    assert!(silent_closed, "a silent connection was not closed");
    assert!(first.is_some(), "no connection was served");
    assert_eq!(second, "", "a second connection from one client was served");
}

/// `moonwall serve --send-timeout-ms` closes the connection of a client
/// that asks for a file far larger than the socket buffers and reads none
/// of it, and says so once at info level with the client's address; when
/// the client reads at last, it gets what the buffers held, then the end.
#[test]
fn serve_closes_a_client_that_stops_reading_after_the_send_timeout() {
    use std::io::{BufRead, BufReader, Read, Write};
    const BIG: usize = 32 << 20;
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("serve-send-timeout");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("big.bin"), vec![b'y'; BIG]).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_moonwall"))
        .args([
            "serve",
            "--root",
            root.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--send-timeout-ms",
            "1000",
        ])
        .env("MOONWALL_CACHE_DIR", common::cache_dir())
        .env("MOONWALL_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let (address, _) = listening_address(&mut stderr);
    let mut stalled = std::net::TcpStream::connect(&address).unwrap();
    let local = stalled.local_addr().unwrap();
    stalled
        .write_all(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    // Nothing is read until the server says it closed the connection.
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut closes = Vec::new();
    while closes.is_empty() && std::time::Instant::now() < deadline {
        if let Ok(line) = lines_rx.recv_timeout(std::time::Duration::from_millis(100))
            && line.contains("send timeout")
        {
            closes.push(line);
        }
    }
    stalled
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let mut got = Vec::new();
    let _ = stalled.read_to_end(&mut got);
    // Any more lines about it come within a second of the end.
    std::thread::sleep(std::time::Duration::from_secs(1));
    closes.extend(
        lines_rx
            .try_iter()
            .filter(|line| line.contains("send timeout")),
    );
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(closes.len(), 1, "{closes:?}");
    assert!(closes[0].contains("INFO"), "{}", closes[0]);
    assert!(closes[0].contains(&local.to_string()), "{}", closes[0]);
    assert!(closes[0].contains("1000 ms"), "{}", closes[0]);
    // Ended by the server (end of stream or reset), well short of the file.
    assert!(got.starts_with(b"HTTP/1.1 200"));
    assert!(got.len() < BIG, "the whole file came: {} bytes", got.len());
}

/// The address `moonwall serve` listens on, from its `listening on
/// http://ADDR` line among the first lines it logs (text format), and the
/// lines read up to it.
fn listening_address(stderr: &mut impl std::io::BufRead) -> (String, String) {
    let mut seen = String::new();
    for _ in 0..20 {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            break;
        }
        seen.push_str(&line);
        if let Some(rest) = line.split("http://").nth(1) {
            return (rest.trim().to_string(), seen);
        }
    }
    panic!("no listening line in {seen}");
}
