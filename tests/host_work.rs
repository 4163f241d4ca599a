//! Host work done for a script (digests, encodings, regex searches and
//! compiles) is paid for with the request's fuel and stops at its deadline,
//! through a server: a request whose host calls would take more than its
//! limits allow is stopped by them, and the server goes on serving.

use crate::common;

use common::site::{Reply, Site};

/// Serve `script` as `/NAME.lua` under the `[limits]` lines `limits`.
fn serve(name: &str, limits: &str, script: &str) -> Site {
    Site::start(
        name,
        "",
        limits,
        "",
        &[(&format!("root/{name}.lua"), script)],
    )
}

/// The request for `/NAME.lua` was stopped by the limit `kind` (`fuel`,
/// `time`): a complete 503, and its access log line names the limit.
#[track_caller]
fn assert_stopped_by(name: &str, reply: &Reply, kind: &str) {
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(reply.complete, "{reply:?}");
    assert!(!reply.body.contains("unreachable"), "{reply:?}");
    let path = format!("/{name}.lua 503");
    let outcome = format!("limit-{kind}");
    let log = common::site::logged();
    assert!(
        log.lines()
            .any(|line| line.contains(&path) && line.contains(&outcome)),
        "no {outcome} logged for {path}"
    );
}

/// `ngx.md5` of a 4 MiB string, 100 times: 400 MiB hashed, which costs
/// about 6.7 * 10^9 fuel at 16 a byte. Under 10^9 the request stops on its
/// fuel limit (before host work was metered, the script's own fuel for it
/// was a few million, and it completed).
#[test]
fn digests_are_paid_for_in_fuel() {
    let site = serve(
        "host_work_md5",
        "fuel = 1000000000\ntimeout_ms = 60000",
        r#"
local big = string.rep("x", 4 * 1024 * 1024)
for i = 1, 100 do ngx.md5(big) end
ngx.say("unreachable: 100 digests done")
"#,
    );
    let reply = site.get("/host_work_md5.lua");
    assert_stopped_by("host_work_md5", &reply, "fuel");
    // The same work for the other digests and encodings is metered too.
    for (name, call) in [
        ("sha1", "ngx.sha1_bin(big)"),
        ("hmac", "ngx.hmac_sha1(big, big)"),
        ("crc32", "ngx.crc32_long(big)"),
        ("base64", "ngx.encode_base64(big)"),
    ] {
        site.write(
            "root/host_work_md5.lua",
            &format!(
                "local big = string.rep('x', 4 * 1024 * 1024)\n\
                 for i = 1, 400 do {call} end\n\
                 ngx.say('unreachable')\n"
            ),
        );
        let reply = site.get("/host_work_md5.lua");
        assert_eq!(reply.status, 503, "{name}: {reply:?}");
    }
    // Small digests are cheap and exact; the server goes on serving.
    site.write(
        "root/host_work_md5.lua",
        "ngx.say(ngx.md5('hello'), ' ', ngx.crc32_long('hello'), ' ', \
         ngx.encode_base64('hello'), ' ', ngx.decode_base64('aGVsbG8'))",
    );
    let reply = site.get("/host_work_md5.lua");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.body,
        "5d41402abc4b2a76b9719d911017c592 907060870 aGVsbG8= hello\n"
    );
}

/// A 64 KiB block of pseudo-random lowercase letters, repeated to
/// `repeat` blocks: a subject in which `[a-m][a-z]{1000}[n-z]{30}` never
/// matches, and on which every engine does work in proportion to the
/// pattern for each byte.
fn pathological_search(repeat: usize) -> String {
    format!(
        r#"
local parts, seed = {{}}, 7
for i = 1, 65536 do
  seed = (seed * 1103515245 + 12345) % 2147483648
  parts[i] = string.char(97 + (seed // 65536) % 26)
end
local subject = string.rep(table.concat(parts), {repeat})
local from = ngx.re.find(subject, "[a-m][a-z]{{1000}}[n-z]{{30}}", "jo")
ngx.say("unreachable: searched, found ", tostring(from))
"#
    )
}

/// A search that would take minutes stops at the request's time limit
/// (checked every 256 bytes of the subject), not when the search ends: the
/// reply, a 503 naming the time limit, comes long before the client's
/// 15 s read timeout. Before the fix the deadline was checked only between
/// matches, and the request held its worker for the whole search.
#[test]
fn a_pathological_search_stops_at_the_time_limit() {
    let site = serve(
        "host_work_regex_time",
        // Fuel to spare: only time stops it.
        "timeout_ms = 1000\nfuel = 1000000000000000",
        &pathological_search(128),
    );
    let reply = site.get("/host_work_regex_time.lua");
    assert_stopped_by("host_work_regex_time", &reply, "time");
    // The server goes on serving.
    site.write(
        "root/host_work_regex_time.lua",
        "ngx.say(ngx.re.find('hello', 'l+'))",
    );
    let reply = site.get("/host_work_regex_time.lua");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, "34\n");
}

/// The same search with all the time it wants stops on its fuel: a search
/// is paid for by the work it does (bytes stepped, DFA states built).
#[test]
fn a_pathological_search_is_paid_for_in_fuel() {
    let site = serve(
        "host_work_regex_fuel",
        "fuel = 2000000000\ntimeout_ms = 600000",
        &pathological_search(128),
    );
    let reply = site.get("/host_work_regex_fuel.lua");
    assert_stopped_by("host_work_regex_fuel", &reply, "fuel");
}
