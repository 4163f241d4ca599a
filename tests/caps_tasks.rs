//! ngx.sleep, light threads (ngx.thread.*) and subrequests
//! (ngx.location.capture*), end to end through a server.

use crate::common;

use common::site::Site;

#[test]
fn threads_overlap_their_waits() {
    let site = Site::start(
        "threads_overlap",
        "",
        "",
        "",
        &[(
            "root/t.lua",
            r#"
ngx.update_time()
local t0 = ngx.now()
local function worker(name, s) ngx.sleep(s) return name end
local a = ngx.thread.spawn(worker, "a", 0.3)
local b = ngx.thread.spawn(worker, "b", 0.3)
ngx.say(ngx.thread.wait(a))
ngx.say(ngx.thread.wait(b))
ngx.update_time()
-- the two sleeps overlapped: well under their sum
ngx.say(ngx.now() - t0 < 0.55)
"#,
        )],
    );
    let reply = site.get("/t.lua");
    assert!(reply.is_ok_with("truea\ntrueb\ntrue\n"), "{reply:?}");
}

#[test]
fn thread_results_errors_and_kill() {
    let site = Site::start(
        "thread_semantics",
        "",
        "",
        "",
        &[(
            "root/t.lua",
            r#"
-- results of a thread that never waits
local t = ngx.thread.spawn(function(a, b) return a + b, "sum" end, 2, 3)
ngx.say(ngx.thread.wait(t))
-- waiting twice
ngx.say(ngx.thread.wait(t))
-- an error inside a thread: false and the message; the request goes on
local bad = ngx.thread.spawn(function() ngx.sleep(0.01) error("thread-boom") end)
local ok, err = ngx.thread.wait(bad)
ngx.say(ok, " ", err:match("thread%-boom") ~= nil)
-- killing a sleeping thread
local sleeper = ngx.thread.spawn(function() ngx.sleep(30) ngx.say("never") end)
ngx.say(ngx.thread.kill(sleeper))
ngx.say(ngx.thread.kill(sleeper))
-- wait for the first of several
local slow = ngx.thread.spawn(function() ngx.sleep(0.3) return "slow" end)
local fast = ngx.thread.spawn(function() ngx.sleep(0.01) return "fast" end)
ngx.say(ngx.thread.wait(slow, fast))
ngx.say(type(slow), " ", coroutine.status(slow))
"#,
        )],
    );
    let reply = site.get("/t.lua");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.body,
        "true5sum\nnilalready waited or killed\nfalse true\ntrue\nnilalready waited or killed\ntruefast\nthread suspended\n"
    );
}

#[test]
fn a_phase_waits_for_its_threads_and_exit_in_a_thread_ends_the_request() {
    let site = Site::start(
        "thread_drain",
        "",
        "",
        "",
        &[
            (
                "root/drain.lua",
                r#"
ngx.thread.spawn(function() ngx.sleep(0.05) ngx.say("from the thread") end)
ngx.say("entry done")
"#,
            ),
            (
                "root/exit.lua",
                r#"
ngx.thread.spawn(function() ngx.sleep(0.02) ngx.status = 201 ngx.say("thread exits") ngx.exit(201) end)
ngx.sleep(5)
ngx.say("never")
"#,
            ),
        ],
    );
    let reply = site.get("/drain.lua");
    assert!(
        reply.is_ok_with("entry done\nfrom the thread\n"),
        "{reply:?}"
    );
    let reply = site.get("/exit.lua");
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(reply.body, "thread exits\n");
}

#[test]
fn sleeping_past_the_deadline_is_the_time_limit() {
    let site = Site::start(
        "sleep_deadline",
        "",
        "timeout_ms = 300",
        "",
        &[("root/t.lua", "ngx.sleep(30) ngx.say('never')")],
    );
    let started = std::time::Instant::now();
    let reply = site.get("/t.lua");
    assert_eq!(reply.status, 503, "{reply:?}");
    // stopped at its deadline, not after the sleep
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert!(common::site::logged().contains("limit-time"));
}

#[test]
fn sleep_arguments_are_checked() {
    let site = Site::start(
        "sleep_arguments",
        "",
        "",
        "",
        &[(
            "root/t.lua",
            r#"
ngx.say(pcall(ngx.sleep, -1))
ngx.say(pcall(ngx.sleep, "x"))
ngx.say(pcall(ngx.thread.spawn, 42))
ngx.sleep(0)
ngx.say("ok")
"#,
        )],
    );
    let reply = site.get("/t.lua");
    assert!(
        reply.is_ok_with(
            "falseinvalid sleep duration \"-1\"\n\
             falsebad argument #1 to 'sleep' (number expected, got string)\n\
             falsebad argument #1 to 'spawn' (function expected, got number)\n\
             ok\n"
        ),
        "{reply:?}"
    );
}

#[test]
fn many_threads_and_waits_are_bounded() {
    // 2000 sleeping threads: more operations than a run may hold at once.
    // Room in the deadline for a loaded machine: this is about the bound on
    // operations, not about speed.
    let site = Site::start(
        "thread_bomb",
        "",
        "timeout_ms = 60000",
        "",
        &[(
            "root/t.lua",
            r#"
local failed, message = 0, nil
local threads = {}
for i = 1, 2000 do
  threads[i] = ngx.thread.spawn(function()
    local ok, err = pcall(ngx.sleep, 0.05)
    if not ok then failed = failed + 1 message = err end
  end)
end
for i = 1, 2000 do ngx.thread.wait(threads[i]) end
ngx.say(failed > 0, " ", failed < 2000, " ", tostring(message):match("too many operations in progress") ~= nil)
"#,
        )],
    );
    let reply = site.get("/t.lua");
    assert!(reply.is_ok_with("true true true\n"), "{reply:?}");
}

#[test]
fn capture_runs_another_location_of_the_tenant() {
    let site = Site::start(
        "capture",
        "",
        "",
        "",
        &[
            (
                "root/main.lua",
                r#"
local res = ngx.location.capture("/sub.lua?a=1", { args = { b = "2" } })
ngx.say(res.status, " ", res.header["X-Sub"], " ", res.truncated)
ngx.print(res.body)
local res = ngx.location.capture("/sub.lua", { method = ngx.HTTP_POST, body = "posted" })
ngx.print(res.body)
local res = ngx.location.capture("/missing.lua")
ngx.say(res.status)
local res = ngx.location.capture("/static.txt")
ngx.say(res.status, " ", res.body)
"#,
            ),
            (
                "root/sub.lua",
                r#"
ngx.header["X-Sub"] = "yes"
ngx.req.read_body()
ngx.say(ngx.req.get_method(), " ", ngx.var.args or "", " ", ngx.req.get_body_data() or "",
        " ", ngx.req.get_headers()["x-parent"] or "")
"#,
            ),
            ("root/static.txt", "plain"),
        ],
    );
    let reply = site.get_with("/main.lua", &["X-Parent: p1"]);
    assert!(
        reply.is_ok_with("200 yes false\nGET a=1&b=2  p1\nPOST  posted p1\n404\n200 plain\n"),
        "{reply:?}"
    );
}

#[test]
fn capture_multi_runs_subrequests_at_once() {
    let site = Site::start(
        "capture_multi",
        "",
        "",
        "",
        &[
            (
                "root/main.lua",
                r#"
ngx.update_time()
local t0 = ngx.now()
local a, b, c = ngx.location.capture_multi({ { "/slow.lua?n=1" }, { "/slow.lua?n=2" }, { "/slow.lua?n=3" } })
ngx.update_time()
ngx.print(a.body, b.body, c.body)
ngx.say(ngx.now() - t0 < 0.8)
"#,
            ),
            ("root/slow.lua", "ngx.sleep(0.3) ngx.say(ngx.var.arg_n)"),
        ],
    );
    let reply = site.get("/main.lua");
    assert!(reply.is_ok_with("1\n2\n3\ntrue\n"), "{reply:?}");
}

#[test]
fn subrequests_are_bounded_in_depth_and_number() {
    let site = Site::start(
        "capture_bombs",
        "",
        "",
        "",
        &[
            (
                "root/self.lua",
                r#"
local depth = tonumber(ngx.var.arg_d or "0")
local ok, res = pcall(ngx.location.capture, "/self.lua?d=" .. (depth + 1))
if not ok then ngx.say("depth ", depth, ": ", res) return end
ngx.print(res.body)
"#,
            ),
            (
                "root/fan.lua",
                r#"
local list = {}
for i = 1, 60 do list[i] = { "/leaf.lua" } end
ngx.say(pcall(ngx.location.capture_multi, list))
"#,
            ),
            ("root/leaf.lua", "ngx.say('leaf')"),
        ],
    );
    let reply = site.get("/self.lua");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        reply.body.contains(
            "depth 4: ngx.location.capture: subrequests nested too deep (at most 4 levels)"
        ),
        "{reply:?}"
    );
    let reply = site.get("/fan.lua");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        reply.body.starts_with("false")
            && reply
                .body
                .contains("too many subrequests (at most 50 per request"),
        "{reply:?}"
    );
}

#[test]
fn capture_needs_a_server() {
    // `moonwall request` runs one request without a server: no subrequests.
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("capture_cli");
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("t.lua");
    std::fs::write(&script, "ngx.say(pcall(ngx.location.capture, '/x'))").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_moonwall"))
        .args(["request", "--content"])
        .arg(&script)
        .arg("/")
        .env("MOONWALL_CACHE_DIR", common::cache_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(
            "falsengx.location.capture: subrequests are only available to requests served by moonwall serve"
        ),
        "{stdout}"
    );
}

/// A request waiting on I/O holds no CPU slot: with the default policy (on
/// a 2-core machine a tenant runs one request on a CPU at a time), 100
/// sleeping requests all wait at once.
#[test]
fn sleeping_requests_hold_no_cpu_slot() {
    let site = Site::start(
        "sleepers_overlap",
        "",
        "timeout_ms = 60000",
        "",
        &[(
            "root/sleep.lua",
            r#"
ngx.update_time()
local started = ngx.now()
ngx.sleep(2)
ngx.update_time()
ngx.say(string.format("%.3f %.3f", started, ngx.now()))
"#,
        )],
    );
    let replies = site.all_at_once("/sleep.lua", 100);
    common::site::assert_all_overlapped(&replies);
}

/// A client that leaves while its request waits (before any of the response
/// went out) does not cut the run off midway: it ends as every run does,
/// with its access-log line.
#[test]
fn a_run_whose_client_left_early_still_ends() {
    use std::io::Write;
    let site = Site::start(
        "client_left_early",
        "",
        "",
        "",
        &[("root/left-early.lua", "ngx.sleep(0.3) ngx.say('late')")],
    );
    {
        let mut client = std::net::TcpStream::connect(site.addr).unwrap();
        client
            .write_all(b"GET /left-early.lua HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !common::site::logged().contains("GET /left-early.lua 200") {
        assert!(
            std::time::Instant::now() < give_up,
            "the run never ended: {}",
            common::site::logged()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_request_and_its_subrequests_share_the_tenants_fuel() {
    // 100 M fuel for the tenant: about 660,000 iterations of the parent's
    // loop. Each subrequest would burn all of it on its own; together they
    // burn it once, and the parent, which still has most of its own limit
    // left, is stopped by the fuel limit of the request tree.
    let site = Site::start(
        "capture_fuel",
        "",
        "fuel = 100000000\ntimeout_ms = 60000",
        "",
        &[
            (
                "root/main.lua",
                r#"
local list = {}
for i = 1, 4 do list[i] = { "/burn.lua" } end
local replies = { ngx.location.capture_multi(list) }
for _, reply in ipairs(replies) do ngx.print(reply.status, " ") end
local x = 0
for i = 1, 200000 do x = x + i end
ngx.say("survived")
"#,
            ),
            ("root/burn.lua", "while true do end"),
            (
                "root/alone.lua",
                "local x = 0 for i = 1, 200000 do x = x + i end ngx.say('alone')",
            ),
        ],
    );
    // Alone, the parent's own work fits the limit easily.
    assert!(site.get("/alone.lua").is_ok_with("alone\n"));
    let reply = site.get("/main.lua");
    // Stopped by a limit: the host's 503, and the log names the fuel limit.
    assert!(!reply.body.contains("survived"), "{reply:?}");
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(
        common::site::logged().contains("stopped: fuel limit of 100000000"),
        "{}",
        common::site::logged()
    );
}

#[test]
fn each_subrequest_is_in_the_access_log_and_the_metrics() {
    let site = Site::start(
        "capture_accounted",
        "",
        "",
        "",
        &[
            (
                "root/main.lua",
                r#"
local a, b = ngx.location.capture_multi({ { "/leaf.lua" }, { "/gone.lua" } })
ngx.say(a.status, " ", b.status)
"#,
            ),
            ("root/leaf.lua", "ngx.say('leaf')"),
        ],
    );
    assert!(site.get("/main.lua").is_ok_with("200 404\n"));
    let metrics = site.registry.metrics.render();
    for series in [
        "moonwall_subrequests_total{tenant=\"t\",status=\"200\",outcome=\"ok\"} 1\n",
        "moonwall_subrequests_total{tenant=\"t\",status=\"404\",outcome=\"not-found\"} 1\n",
        "moonwall_requests_total{tenant=\"t\",status=\"200\",outcome=\"ok\"} 1\n",
    ] {
        assert!(metrics.contains(series), "{series} in\n{metrics}");
    }
    let logged = common::site::logged();
    assert!(
        logged.contains("t GET /leaf.lua 200 (subrequest)"),
        "{logged}"
    );
    assert!(
        logged.contains("t GET /gone.lua 404 (subrequest)"),
        "{logged}"
    );
}

#[test]
fn a_request_and_its_subrequests_share_the_tenants_memory() {
    // 16 MiB for the tenant: eight 3 MiB static files read by subrequests
    // at once would be 24 MiB of host copies. They are refused once the
    // request tree's memory is used up, with a message that says so.
    let big = "x".repeat(3 << 20);
    let site = Site::start(
        "capture_memory",
        "",
        "memory_mib = 16",
        "",
        &[
            (
                "root/main.lua",
                r#"
local list = {}
for i = 1, 8 do list[i] = { "/big.txt" } end
-- (24 MiB of files for a 16 MiB request tree)
local ok, err = pcall(ngx.location.capture_multi, list)
ngx.say(ok, " ", tostring(err))
"#,
            ),
            (
                "root/one.lua",
                "ngx.say(#ngx.location.capture('/big.txt').body)",
            ),
            ("root/big.txt", &big),
        ],
    );
    // One at a time fits.
    assert!(site.get("/one.lua").is_ok_with(&format!("{}\n", 3 << 20)));
    // Eight at once do not: the parent collects the responses only once all
    // are in, so at most five of them can be held when the others ask. (The
    // parent itself may then run out of memory taking them in: its reply
    // is the script's message or a 503; the log has the subrequests' own.)
    let reply = site.get("/main.lua");
    assert!(
        reply.status == 503 || reply.body.contains("does not fit"),
        "{reply:?}"
    );
    let logged = common::site::logged();
    assert!(
        logged.contains(
            "refused: a static file of 3145728 bytes does not fit in the request's memory limit of 16 MiB (the request and its subrequests together)"
        ),
        "{logged}"
    );
}

/// What a script hands `ngx.location.capture` crosses to the host as bytes
/// the host checks: a URI or args that are not UTF-8 are a Lua error the
/// script can catch (they trapped the whole run while the subrequest's
/// fields were WIT strings), and the headers it would inherit are bounded
/// (in count by the guest, in bytes by the host).
#[test]
fn capture_checks_its_uri_args_and_headers_on_the_host() {
    let site = Site::start(
        "capture_bytes",
        "",
        "",
        "",
        &[
            (
                "root/main.lua",
                r#"
ngx.say(pcall(ngx.location.capture, "/sub\255.lua"))
ngx.say(pcall(ngx.location.capture, "/sub.lua?a=\255"))
ngx.say(pcall(ngx.location.capture, "/sub.lua", { args = "b=\192" }))
ngx.req.set_header("X-Big", string.rep("v", 40000))
ngx.req.set_header("X-Big-Too", string.rep("w", 30000))
ngx.say(pcall(ngx.location.capture, "/sub.lua"))
ngx.req.clear_header("X-Big-Too")
local res = ngx.location.capture("/sub.lua")
ngx.print(res.body)
local many = {}
for i = 1, 1001 do many[i] = "v" .. i end
ngx.req.set_header("X-Many", many)
ngx.say(pcall(ngx.location.capture, "/sub.lua"))
"#,
            ),
            (
                "root/sub.lua",
                r#"ngx.say("sub ", #(ngx.req.get_headers()["x-big"] or ""))"#,
            ),
        ],
    );
    let reply = site.get("/main.lua");
    assert!(
        reply.is_ok_with(
            "falsengx.location.capture: uri \"/sub\u{fffd}.lua\": not valid UTF-8\n\
             falsengx.location.capture: invalid args \"a=\u{fffd}\"\n\
             falsengx.location.capture: invalid args \"b=\u{fffd}\"\n\
             falsengx.location.capture: too many header bytes\n\
             sub 40000\n\
             falsemoonwall.tasks:266: capture: too many headers\n"
        ),
        "{reply:?}"
    );
}

/// Counts a loop's iterations into the shared dict `progress` under `key`,
/// every 1,000, until it is stopped.
fn counting(key: &str) -> String {
    format!(
        "local d, n = ngx.shared.progress, 0\nwhile true do n = n + 1 if n % 1000 == 0 then d:set('{key}', n) end end"
    )
}

/// The log phase that runs after a limit stopped the request runs on fuel
/// the request held back for it, not on fuel of its own: the content
/// phase and the log phase together get through no more of the same loop
/// than the content phase alone does with the whole budget. Before, the
/// log phase had a tenth of the limit on top (1.1 times the budget), and
/// its fuel was not counted.
#[test]
fn the_log_phase_after_a_limit_runs_within_the_requests_fuel() {
    let site = Site::start(
        "log_phase_budget",
        "",
        "fuel = 1000000000\ntimeout_ms = 60000",
        concat!(
            "shared_dicts = { progress = \"1m\" }\n",
            "\n[[location]]\npath = \"/alone\"\ncontent = \"alone.lua\"\n",
            "\n[[location]]\npath = \"/both\"\ncontent = \"content.lua\"\nlog = \"log.lua\"\n",
            "\n[[location]]\npath = \"/read\"\ncontent = \"read.lua\"\n",
        ),
        &[
            ("root/alone.lua", &counting("alone")),
            ("root/content.lua", &counting("content")),
            ("root/log.lua", &counting("log")),
            (
                "root/read.lua",
                "local d = ngx.shared.progress\nngx.say(d:get('alone'), ' ', d:get('content'), ' ', d:get('log'))",
            ),
        ],
    );
    assert_eq!(site.get("/alone").status, 503);
    assert_eq!(site.get("/both").status, 503);
    // The log phase ends after the response: wait for its count.
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let counts = loop {
        let reply = site.get("/read");
        let counts: Vec<u64> = reply
            .body
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        if counts.len() == 3 && common::site::logged().contains("log phase stopped") {
            break counts;
        }
        assert!(std::time::Instant::now() < give_up, "{reply:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let (alone, content, log) = (counts[0], counts[1], counts[2]);
    // The log phase ran, on about a tenth.
    assert!(log > alone / 20 && log < alone / 5, "{counts:?}");
    // Together, no more than the budget (a few thousand iterations of
    // slack: counts are kept every 1,000, and each run may overdraw by one
    // 1 ms tick).
    assert!(content + log <= alone + alone / 50, "{counts:?}");
}
