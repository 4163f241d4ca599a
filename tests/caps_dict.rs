//! ngx.shared.DICT end to end through a server: the whole API on the memory
//! backend and, with the same expectations, on a real Redis server that the
//! tests start themselves; denial, isolation between tenants, persistence
//! across requests and reloads, capacity and eviction, hostile uses.

use crate::common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::site::{Reply, Site, send};

/// Prepended to every script: `show(...)` says its arguments, tostring'd.
const PRELUDE: &str = r#"
local function show(...)
  local t = table.pack(...)
  for i = 1, t.n do t[i] = tostring(t[i]) end
  ngx.say(table.concat(t, " "))
end
"#;

fn script(body: &str) -> String {
    format!("{PRELUDE}\n{body}")
}

fn policy(dicts: &str) -> String {
    format!(
        "tenant = \"t\"\nhosts = [\"localhost\"]\nroot = \"../root\"\n\n[limits]\n\n[capabilities]\nshared_dicts = {{ {dicts} }}\n"
    )
}

/// A site serving `scripts` (name, body) with `dicts` granted, on the
/// backend `server_top` names.
fn site(name: &str, server_top: &str, dicts: &str, scripts: &[(&str, &str)]) -> Site {
    site_limited(name, server_top, "", dicts, scripts)
}

/// [`site`], with `[limits]` lines for its tenant.
fn site_limited(
    name: &str,
    server_top: &str,
    limits: &str,
    dicts: &str,
    scripts: &[(&str, &str)],
) -> Site {
    let files: Vec<(String, String)> = scripts
        .iter()
        .map(|(file, body)| (format!("root/{file}"), script(body)))
        .collect();
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(path, body)| (path.as_str(), body.as_str()))
        .collect();
    Site::start(
        name,
        server_top,
        limits,
        &format!("shared_dicts = {{ {dicts} }}"),
        &files,
    )
}

#[track_caller]
fn ok_body(reply: &Reply) -> &str {
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.complete, "{reply:?}");
    &reply.body
}

/// A redis-server of the test's own, on a free loopback port, killed on
/// drop.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    fn start(name: &str) -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("redis")
            .join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                if error.kind() == std::io::ErrorKind::NotFound {
                    panic!(
                        "redis-server is not installed: run scripts/setup.sh (it installs the \
                         redis-server package) to test the Redis backend of shared dicts"
                    )
                }
                panic!("cannot start redis-server: {error}")
            });
        let server = RedisServer { child, port };
        let started = Instant::now();
        while !server.answers_ping() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not answer on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn answers_ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let mut answer = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut answer).is_ok()
            && &answer == b"+PONG\r\n"
    }

    /// The server config line that puts shared dicts on this server.
    fn backend(&self, query: &str) -> String {
        format!(
            "shared_dicts_backend = \"redis://127.0.0.1:{}/0{query}\"",
            self.port
        )
    }

    /// The server's `INFO section` text.
    fn info(&self, section: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("redis answers");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .write_all(format!("INFO {section}\r\n").as_bytes())
            .unwrap();
        let mut text = Vec::new();
        let mut buffer = [0u8; 4096];
        // A bulk reply: `$LEN\r\n` then LEN bytes and `\r\n`.
        loop {
            let n = stream.read(&mut buffer).expect("an INFO reply");
            assert!(n > 0, "redis closed the connection");
            text.extend_from_slice(&buffer[..n]);
            let head = text.iter().position(|&b| b == b'\n');
            if let Some(head) = head {
                let len: usize = String::from_utf8_lossy(&text[1..head - 1]).parse().unwrap();
                if text.len() >= head + 1 + len + 2 {
                    break;
                }
            }
        }
        String::from_utf8_lossy(&text).into_owned()
    }

    /// The number after `name` (`name:N` or `name=N`) in `text`.
    fn stat(text: &str, name: &str) -> Option<u64> {
        let at = text.find(name)? + name.len();
        let digits: String = text[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    }

    /// How many times the server has run a script (`EVALSHA` and `EVAL`)
    /// so far: each is one atomic step on Redis.
    fn script_calls(&self) -> u64 {
        let text = self.info("commandstats");
        ["cmdstat_evalsha:calls=", "cmdstat_eval:calls="]
            .iter()
            .filter_map(|stat| Self::stat(&text, stat))
            .sum()
    }

    /// Clients connected now (this question's connection among them).
    fn connected_clients(&self) -> u64 {
        Self::stat(&self.info("clients"), "connected_clients:").expect("connected_clients")
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// The same semantics on both backends
// ---------------------------------------------------------------------------

const API: &str = r#"
local d = ngx.shared.cache
show("same object", ngx.shared.cache == d)
show("set", d:set("s", "hello"))
show("get", d:get("s"))
show("set int", d:set("i", 42))
show("int", math.type(d:get("i")), d:get("i"))
d:set("f", 1.5)
show("float", math.type(d:get("f")), d:get("f"))
d:set("whole", 2.0)
show("whole float", math.type(d:get("whole")))
d:set("b", false)
show("bool", d:get("b"))
d:set("bin", "a\0b\255")
show("binary", d:get("bin") == "a\0b\255")
d:set("flags", "v", 0, 7)
show("flags", d:get("flags"))
show("missing", d:get("nope"))
show("add exists", d:add("s", "x"))
show("add new", d:add("a", 1))
show("replace missing", d:replace("zz", 1))
show("replace", d:replace("a", "two"))
show("replaced", d:get("a"))
show("safe_set", d:safe_set("ss", "v"))
show("safe_add", d:safe_add("ss", "v"))
show("add nil", d:add("n", nil))
show("set nil", d:set("ss", nil))
show("deleted", d:get("ss"))
show("delete", d:delete("a"))
show("delete missing", d:delete("a"))
show("bad value", d:set("t", {}))
show("nil key", d:get(nil))
show("empty key", d:set("", 1))
show("long key", d:set(string.rep("k", 65536), 1))
show("number key", d:set(7, "seven"))
show("as string", d:get("7"))
show("incr missing", d:incr("c", 1))
show("incr init", d:incr("c", 1, 10))
show("incr", d:incr("c", 5))
show("incr int", math.type(d:incr("c", 1)))
show("incr float", d:incr("c", 0.5))
show("incr string", d:incr("s", 1))
show("incr overflow", d:incr("i", math.maxinteger))
show("incr unchanged", d:get("i"))
show("incr numeric string", d:incr("i", "8"))
show("incr init_ttl", d:incr("ct", 1, 0, 10))
local ttl = d:ttl("ct")
show("init ttl", ttl > 9 and ttl <= 10)
show("ttl none", d:ttl("s"))
show("ttl missing", d:ttl("nope"))
show("expire", d:expire("s", 100))
show("ttl set", d:ttl("s") > 99)
show("expire 0", d:expire("s", 0))
show("ttl cleared", d:ttl("s"))
show("expire missing", d:expire("nope", 1))
d:set("short", "v", 0.05, 3)
d:lpush("shortlist", "x")
d:expire("shortlist", 0.05)
ngx.sleep(0.2)
show("expired", d:get("short"))
show("stale", d:get_stale("short"))
show("stale live", d:get_stale("s"))
show("ttl expired", d:ttl("short"))
show("replace expired", d:replace("short", 1))
show("expired list", d:llen("shortlist"))
local keys = d:get_keys(0)
table.sort(keys)
show("keys", table.concat(keys, ","))
show("keys max", #d:get_keys(2))
show("huge exptime", d:set("hx", 1, math.maxinteger), d:ttl("hx") > 1e9)
show("flush_expired", d:flush_expired())
show("stale gone", d:get_stale("short"))
show("lpush", d:lpush("l", "a"))
show("lpush", d:lpush("l", 2))
show("rpush", d:rpush("l", 3.5))
show("llen", d:llen("l"))
show("get list", d:get("l"))
show("push bool", d:lpush("l", true))
show("push on string", d:lpush("s", "x"))
show("llen string", d:llen("s"))
show("pop string", d:lpop("s"))
local first = d:lpop("l")
show("lpop", first, math.type(first))
show("lpop", d:lpop("l"))
show("rpop", d:rpop("l"))
show("emptied", d:llen("l"), d:lpop("l"))
d:rpush("l2", 1)
show("incr list", d:incr("l2", 1))
show("set over list", d:set("l2", "plain"))
show("list replaced", d:get("l2"))
show("capacity", d:capacity())
show("free_space", d:free_space() < d:capacity())
d:flush_all()
show("flushed", d:get("s"))
show("flushed stale", d:get_stale("s"))
show("flushed keys", #d:get_keys(0))
show("add after flush", d:add("s", "again"))
show("flush_expired all", d:flush_expired() > 0)
show("left", table.concat(d:get_keys(0), ","))
show("zone", pcall(d.get, "k"))
show("forged", pcall(d.get, setmetatable({1}, getmetatable(d)), "k"))
local ok, err = pcall(function() return d.get("k") end)
show("dot call", ok, err:find('bad "zone" argument', 1, true) ~= nil)
show("exptime", pcall(d.set, d, "k", 1, -1))
show("flags arg", pcall(d.set, d, "k", 1, 0, -1))
show("init_ttl alone", pcall(d.incr, d, "c", 1, nil, 5))
show("incr value", pcall(d.incr, d, "c", {}))
"#;

const API_EXPECTED: &str = r#"same object true
set true nil false
get hello
set int true nil false
int integer 42
float float 1.5
whole float float
bool false
binary true
flags v 7
missing nil
add exists false exists false
add new true nil false
replace missing false not found false
replace true nil false
replaced two
safe_set true nil false
safe_add false exists false
add nil false attempt to add or replace nil values false
set nil true nil false
deleted nil
delete true nil false
delete missing true nil false
bad value nil bad value type
nil key nil nil key
empty key nil empty key
long key nil key too long
number key true nil false
as string seven
incr missing nil not found
incr init 11 nil false
incr 16
incr int integer
incr float 17.5
incr string nil not a number
incr overflow nil integer overflow
incr unchanged 42
incr numeric string 50
incr init_ttl 1 nil false
init ttl true
ttl none 0.0
ttl missing nil not found
expire true
ttl set true
expire 0 true
ttl cleared 0.0
expire missing nil not found
expired nil
stale v 3 true
stale live hello nil false
ttl expired nil not found
replace expired false not found false
expired list 0
keys 7,b,bin,c,ct,f,flags,i,s,whole
keys max 2
huge exptime true true
flush_expired 2
stale gone nil
lpush 1
lpush 2
rpush 3
llen 3
get list nil value is a list
push bool nil bad value type
push on string nil value not a list
llen string nil value not a list
pop string nil value not a list
lpop 2 integer
lpop a
rpop 3.5
emptied 0 nil
incr list nil not a number
set over list true nil false
list replaced plain
capacity 1048576
free_space true
flushed nil
flushed stale hello nil true
flushed keys 0
add after flush true nil false
flush_expired all true
left s
zone false bad "zone" argument
forged false bad "zone" argument
dot call false true
exptime false bad "exptime" argument
flags arg false bad "flags" argument
init_ttl alone false must provide "init" when providing "init_ttl"
incr value false bad value arg: number expected, got table
"#;

/// Capacity, accounting and eviction in a 4k dict. Each entry "kNN" with a
/// 10-byte value costs 3 + 10 + 192 = 205 bytes: 19 fit (3895 bytes).
const CAPACITY: &str = r#"
local d = ngx.shared.small
for i = 1, 19 do
  local ok, err, forcible = d:set(string.format("k%02d", i), "0123456789")
  if not ok or forcible then show("unexpected", i, ok, err, forcible) end
end
show("capacity", d:capacity(), "free", d:free_space())
show("safe_set full", d:safe_set("k20", "0123456789"))
show("safe_add full", d:safe_add("k20", "0123456789"))
d:get("k01")
show("set full", d:set("k20", "0123456789"))
show("lru", d:get("k01"), d:get("k02"))
show("free", d:free_space())
show("too big", d:set("huge", string.rep("x", 4096)))
show("kept", #d:get_keys(0))
d:set("k03", "0123456789", 0.05)
ngx.sleep(0.2)
show("expired first", d:safe_set("k21", "0123456789"))
show("k03 gone", d:get_stale("k03"))
d:flush_all()
for i = 30, 48 do
  local ok, err, forcible = d:safe_set("k" .. i, "0123456789")
  if not ok or forcible then show("flushed room", i, ok, err, forcible) end
end
show("after flush", #d:get_keys(0), d:free_space())
local big = string.rep("y", 4096 - 192 - 3)
show("alone", d:set("big", big))
show("alone keys", #d:get_keys(0), d:free_space())
show("one byte more", d:set("big", big .. "y"))
show("still", #d:get("big"))
show("list alone", d:lpush("list", "z"))
show("big kept", #d:get("big"))
"#;

const CAPACITY_EXPECTED: &str = r#"capacity 4096 free 201
safe_set full false no memory false
safe_add full false no memory false
set full true nil true
lru 0123456789 nil
free 201
too big false no memory false
kept 19
expired first true nil false
k03 gone nil
after flush 19 201
alone true nil true
alone keys 1 0
one byte more false no memory false
still 3901
list alone false no memory
big kept 3901
"#;

/// Persistence across requests: a counter.
const COUNTER: &str = r#"show(ngx.shared.cache:incr("hits", 1, 0))"#;

fn api_on(name: &str, server_top: &str) {
    let site = site(
        name,
        server_top,
        "cache = \"1m\", small = \"4k\"",
        &[("api.lua", API), ("capacity.lua", CAPACITY)],
    );
    assert_eq!(ok_body(&site.get("/api.lua")), API_EXPECTED);
    assert_eq!(ok_body(&site.get("/capacity.lua")), CAPACITY_EXPECTED);
}

#[test]
fn the_api_on_memory() {
    api_on("dict_api_memory", "");
}

#[test]
fn the_api_on_redis() {
    let redis = RedisServer::start("api");
    api_on("dict_api_redis", &redis.backend(""));
}

/// Values survive requests, and reloads that keep the dict's name and size.
fn persistence_on(name: &str, server_top: &str) -> Site {
    let site = site(
        name,
        server_top,
        "cache = \"1m\"",
        &[("count.lua", COUNTER)],
    );
    assert_eq!(ok_body(&site.get("/count.lua")), "1 nil false\n");
    assert_eq!(ok_body(&site.get("/count.lua")), "2 nil false\n");
    // The same dict, another policy file: kept.
    site.write(
        "policies/t.toml",
        &format!("# edited\n{}", policy("cache = \"1m\", other = \"8k\"")),
    );
    let report = site.registry.reload();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(ok_body(&site.get("/count.lua")), "3 nil false\n");
    site
}

#[test]
fn dicts_persist_across_requests_and_reloads_on_memory() {
    let site = persistence_on("dict_persist_memory", "");
    // Another size is another dict.
    site.write("policies/t.toml", &policy("cache = \"2m\""));
    site.registry.reload();
    assert_eq!(ok_body(&site.get("/count.lua")), "1 nil false\n");
    // Dropped from the policy: denied.
    site.write("policies/t.toml", &policy(""));
    site.registry.reload();
    let reply = site.get("/count.lua");
    assert_eq!(reply.status, 500, "{reply:?}");
}

#[test]
fn dicts_persist_across_requests_and_reloads_on_redis() {
    let redis = RedisServer::start("persist");
    let site = persistence_on("dict_persist_redis", &redis.backend(""));
    // The data lives in Redis: another size keeps it, and the new size
    // counts from there.
    site.write("policies/t.toml", &policy("cache = \"2m\""));
    site.registry.reload();
    assert_eq!(ok_body(&site.get("/count.lua")), "4 nil false\n");
}

/// Concurrent increments from many requests, on `sites` (several nodes on
/// one Redis, or one node), add up exactly.
fn concurrent_increments(sites: &[&Site]) {
    std::thread::scope(|scope| {
        for worker in 0..4 {
            let site = sites[worker % sites.len()];
            scope.spawn(move || {
                for _ in 0..5 {
                    assert_eq!(ok_body(&site.get("/add.lua")), "done\n");
                }
            });
        }
    });
    assert_eq!(ok_body(&sites[0].get("/total.lua")), "2000\n");
}

const ADD: &str = r#"
local d = ngx.shared.cache
for i = 1, 100 do assert(d:incr("n", 1, 0)) end
ngx.say("done")
"#;

const TOTAL: &str = r#"show(ngx.shared.cache:get("n"))"#;

#[test]
fn concurrent_increments_add_up_on_memory() {
    let node = site(
        "dict_concurrent_memory",
        "",
        "cache = \"1m\"",
        &[("add.lua", ADD), ("total.lua", TOTAL)],
    );
    concurrent_increments(&[&node]);
}

#[test]
fn nodes_share_state_through_redis() {
    let redis = RedisServer::start("nodes");
    let scripts = [("add.lua", ADD), ("total.lua", TOTAL)];
    let a = site(
        "dict_node_a",
        &redis.backend(""),
        "cache = \"1m\"",
        &scripts,
    );
    let b = site(
        "dict_node_b",
        &redis.backend(""),
        "cache = \"1m\"",
        &scripts,
    );
    concurrent_increments(&[&a, &b]);
    assert_eq!(ok_body(&b.get("/total.lua")), "2000\n");
}

// ---------------------------------------------------------------------------
// Denial and isolation
// ---------------------------------------------------------------------------

const OPEN: &str = r#"
local ok, err = pcall(function() return ngx.shared[ngx.var.arg_name] end)
show(ok, err)
"#;

#[test]
fn an_ungranted_dict_is_a_clear_error() {
    let none = Site::start(
        "dict_denied_none",
        "",
        "",
        "",
        &[("root/open.lua", &script(OPEN))],
    );
    let body = ok_body(&none.get("/open.lua?name=cache")).to_string();
    assert!(body.starts_with("false "), "{body}");
    assert!(
        body.ends_with(
            ": ngx.shared: no shared dict \"cache\" (the policy grants none; see [capabilities] shared_dicts)\n"
        ),
        "{body}"
    );
    let some = site(
        "dict_denied_other",
        "",
        "cache = \"1m\", sessions = \"1m\"",
        &[
            ("open.lua", OPEN),
            (
                "number.lua",
                "show(pcall(function() return ngx.shared[1] end))",
            ),
        ],
    );
    let body = ok_body(&some.get("/open.lua?name=secret")).to_string();
    assert!(
        body.ends_with(
            ": ngx.shared: no shared dict \"secret\" (the policy grants: cache, sessions; see [capabilities] shared_dicts)\n"
        ),
        "{body}"
    );
    assert!(ok_body(&some.get("/open.lua?name=sessions")).starts_with("true table"));
    // Not a string: a clear error too.
    let body = ok_body(&some.get("/number.lua")).to_string();
    assert!(
        body.starts_with("false ")
            && body.ends_with(": ngx.shared: a dict name is a string, not a number\n"),
        "{body}"
    );
}

/// Two tenants, each with a dict `cache` (and `t` with `secret` too): each
/// sees only its own.
fn isolation_on(name: &str, server_top: &str) {
    let site = Site::start(
        name,
        server_top,
        "",
        "shared_dicts = { cache = \"1m\", secret = \"1m\" }",
        &[
            (
                "root/t.lua",
                &script(
                    r#"
ngx.shared.cache:set("x", "from t")
ngx.shared.secret:set("token", "t's")
show(ngx.shared.cache:get("x"))
"#,
                ),
            ),
            (
                "policies/u.toml",
                "tenant = \"u\"\nhosts = [\"other.test\"]\nroot = \"../root_u\"\n\n[capabilities]\nshared_dicts = { cache = \"1m\" }\n",
            ),
            (
                "root_u/u.lua",
                &script(
                    r#"
show(ngx.shared.cache:get("x"), #ngx.shared.cache:get_keys(0))
ngx.shared.cache:set("x", "from u")
show(pcall(function() return ngx.shared.secret end))
"#,
                ),
            ),
        ],
    );
    let as_u = |path: &str| {
        send(
            site.addr,
            format!("GET {path} HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
    };
    assert_eq!(ok_body(&site.get("/t.lua")), "from t\n");
    let reply = as_u("/u.lua");
    let body = ok_body(&reply);
    assert!(body.starts_with("nil 0\nfalse "), "{body}");
    assert!(
        body.contains("no shared dict \"secret\" (the policy grants: cache;"),
        "{body}"
    );
    // t's value is untouched by u's set.
    assert_eq!(ok_body(&site.get("/t.lua")), "from t\n");
}

#[test]
fn tenants_are_isolated_on_memory() {
    isolation_on("dict_isolation_memory", "");
}

#[test]
fn tenants_are_isolated_on_redis() {
    let redis = RedisServer::start("isolation");
    isolation_on("dict_isolation_redis", &redis.backend(""));
}

// ---------------------------------------------------------------------------
// Hostile uses
// ---------------------------------------------------------------------------

/// Many keys, huge keys and values, list bombs: all within the dict's size,
/// and nothing else evicted by what never evicts.
fn hostile_script(keys: usize) -> String {
    format!(
        r#"
local d, small = ngx.shared.cache, ngx.shared.small
small:set("keep", "me")
-- a value bigger than the dict
show("too big", d:set("v", string.rep("x", 2 * 1024 * 1024)))
show("too big safe", d:safe_set("v", string.rep("x", 1024 * 1024)))
-- huge keys
show("key 65536", d:set(string.rep("k", 65536), 1))
show("key 65535 small", small:set(string.rep("k", 65535), 1))
local long = string.rep("k", 65535)
show("key 65535", d:set(long, 1), d:get(long))
-- many keys: the dict keeps what fits
local failed = 0
for i = 1, {keys} do
  if not d:set("key" .. i, i) then failed = failed + 1 end
end
local n = #d:get_keys(0)
show("many keys", failed, n > 1000, n <= 1048576 // 192, d:free_space() < 256)
show("newest kept", d:get("key{keys}"))
-- a list bomb in the small dict stops at its size, never evicting
local length, err = 0, nil
for i = 1, 100000 do
  local len, e = small:rpush("bomb", string.rep("z", 100))
  if not len then err = e break end
  length = len
end
show("bomb", err, length > 10, length < 4096 // 148, small:llen("bomb") == length)
show("keep", small:get("keep"))
show("bomb safe", small:safe_set("other", "x"))
show("bad key type", d:set({{}}, 1))
"#
    )
}

const HOSTILE_EXPECTED_HEAD: &str = "too big false no memory false
too big safe false no memory false
key 65536 nil key too long
key 65535 small false no memory false
key 65535 true 1
many keys 0 true true true
";

fn hostile_on(name: &str, server_top: &str, keys: usize) {
    // Tens of thousands of dict operations (each a round trip on Redis):
    // a deadline with room, so that a loaded machine cannot fail the test
    // (it asserts on what the dict kept, not on speed).
    let site = site_limited(
        name,
        server_top,
        "timeout_ms = 120000",
        "cache = \"1m\", small = \"4k\"",
        &[("hostile.lua", &hostile_script(keys))],
    );
    let reply = site.get("/hostile.lua");
    let body = ok_body(&reply);
    let expected = format!(
        "{HOSTILE_EXPECTED_HEAD}newest kept {keys}\nbomb no memory true true true\nkeep me\nbomb safe false no memory false\nbad key type true nil true\n"
    );
    assert_eq!(body, expected);
}

#[test]
fn hostile_uses_are_contained_on_memory() {
    hostile_on("dict_hostile_memory", "", 300_000);
}

#[test]
fn hostile_uses_are_contained_on_redis() {
    let redis = RedisServer::start("hostile");
    hostile_on("dict_hostile_redis", &redis.backend(""), 20_000);
}

// ---------------------------------------------------------------------------
// Scans: paid for, in batches
// ---------------------------------------------------------------------------

/// 50,000 entries that expire at once, then `get_keys(0)` 500 times: the
/// host visits 25 million entries for a script that gets no keys back (and
/// so does no work of its own). Each visit costs fuel: under 3 * 10^9 the
/// request stops on its fuel limit (before, the scans were free and it
/// completed).
#[test]
fn scans_of_a_memory_dict_are_paid_for_in_fuel() {
    let site = site_limited(
        "dict_scan_fuel",
        "",
        "fuel = 3000000000\ntimeout_ms = 60000",
        "cache = \"64m\"",
        &[
            (
                "fill.lua",
                r#"
local d = ngx.shared.cache
for i = 1, 50000 do d:set("k" .. i, i, 0.001) end
ngx.sleep(0.01)
show("filled", #d:get_keys(0))
"#,
            ),
            (
                "scan.lua",
                r#"
local d, n = ngx.shared.cache, 0
for i = 1, 500 do n = n + #d:get_keys(0) end
show("unreachable", n)
"#,
            ),
            (
                "flush.lua",
                r#"
show("flushed", ngx.shared.cache:flush_expired(0))
"#,
            ),
        ],
    );
    assert_eq!(ok_body(&site.get("/fill.lua")), "filled 0\n");
    let reply = site.get("/scan.lua");
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(!reply.body.contains("unreachable"), "{reply:?}");
    assert!(
        common::site::logged()
            .lines()
            .any(|line| line.contains("/scan.lua 503") && line.contains("limit-fuel"))
    );
    // One flush of every expired entry is within the budget.
    assert_eq!(ok_body(&site.get("/flush.lua")), "flushed 50000\n");
}

/// On Redis, `get_keys(0)`, `flush_expired(0)` and a write that evicts
/// thousands of entries each run as several script calls of at most 1,024
/// entries (counted by Redis itself: `INFO commandstats`), never one call
/// over every key; and each gives the whole answer.
#[test]
fn scans_and_evictions_on_redis_are_batched() {
    let redis = RedisServer::start("batches");
    let site = site_limited(
        "dict_batches_redis",
        &redis.backend(""),
        "timeout_ms = 120000",
        "cache = \"2m\"",
        &[
            (
                "fill.lua",
                r#"
local d = ngx.shared.cache
local ttl = tonumber(ngx.var.arg_ttl) or 0
for i = 1, tonumber(ngx.var.arg_n) do d:set("k" .. i, i, ttl) end
if ttl > 0 then ngx.sleep(ttl + 0.05) end
show("filled")
"#,
            ),
            ("keys.lua", r#"show("keys", #ngx.shared.cache:get_keys(0))"#),
            (
                "flush.lua",
                r#"show("flushed", ngx.shared.cache:flush_expired(0))"#,
            ),
            (
                "big.lua",
                r#"
local d = ngx.shared.cache
local ok, err, forcible = d:set("big", string.rep("v", 1800000))
local left = #d:get_keys(0)
show("big", ok, err, forcible, left > 1 and left < 2000, d:get("k9000"), d:get("k1"))
"#,
            ),
        ],
    );
    assert_eq!(ok_body(&site.get("/fill.lua?n=3000")), "filled\n");
    let before = redis.script_calls();
    assert_eq!(ok_body(&site.get("/keys.lua")), "keys 3000\n");
    let calls = redis.script_calls() - before;
    assert!(
        calls >= 3,
        "get_keys(0) of 3000 keys in {calls} script calls"
    );

    assert_eq!(ok_body(&site.get("/fill.lua?n=3000&ttl=0.2")), "filled\n");
    let before = redis.script_calls();
    assert_eq!(ok_body(&site.get("/flush.lua")), "flushed 3000\n");
    let calls = redis.script_calls() - before;
    assert!(
        calls >= 3,
        "flush_expired(0) of 3000 in {calls} script calls"
    );

    // About 9,000 entries of ~200 bytes fill the 2 MiB dict; a value of
    // 1.8 MB evicts nearly all of them.
    assert_eq!(ok_body(&site.get("/fill.lua?n=9000")), "filled\n");
    let before = redis.script_calls();
    assert_eq!(
        ok_body(&site.get("/big.lua")),
        "big true nil true true 9000 nil\n"
    );
    let calls = redis.script_calls() - before;
    assert!(calls >= 8, "evicting ~9000 entries in {calls} script calls");
}

// ---------------------------------------------------------------------------
// Writes: the entries they remove for room are paid for in fuel
// ---------------------------------------------------------------------------

/// The fuel of the `nth` (from 0) request for `path` answered 200, read from
/// its access-log line (waiting for it: the line may follow the answer).
/// Fuel is deterministic: the same script doing the same work uses the same
/// fuel, and what a host call charges adds to it.
fn fuel_of(path: &str, nth: usize) -> u64 {
    let needle = format!(" {path} 200");
    let waited = Instant::now();
    loop {
        let log = common::site::logged();
        if let Some(line) = log.lines().filter(|line| line.contains(&needle)).nth(nth) {
            return line
                .split_whitespace()
                .find_map(|field| field.strip_prefix("fuel="))
                .and_then(|fuel| fuel.parse().ok())
                .unwrap_or_else(|| panic!("no fuel in the access-log line {line:?}"));
        }
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "no access-log line {nth} for {path}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Scripts that fill a dict (`?n=` entries, `&from=` the first's number,
/// `&ttl=` seconds: entries that expire, then waits for them to), count its entries (expired or live) and empty
/// it, for the eviction-fuel tests; `write` is one write whose answer does
/// not depend on what it removed.
fn eviction_scripts(prefix: &str, write: &str) -> Vec<(String, String)> {
    vec![
        (
            format!("{prefix}_fill.lua"),
            r#"
local d = ngx.shared.cache
local ttl = tonumber(ngx.var.arg_ttl) or 0
local from = tonumber(ngx.var.arg_from) or 1
for i = from, from + tonumber(ngx.var.arg_n) - 1 do
  local ok, err, forcible = d:set("k" .. i, i, ttl)
  if not ok or forcible then error("the fill evicted at " .. i) end
end
if ttl > 0 then ngx.sleep(ttl + 0.05) end
show("filled")
"#
            .to_string(),
        ),
        (
            format!("{prefix}_count.lua"),
            r#"
local d = ngx.shared.cache
local expired = d:flush_expired(0)
show("left", expired + #d:get_keys(0))
"#
            .to_string(),
        ),
        (
            format!("{prefix}_clear.lua"),
            r#"ngx.shared.cache:flush_all() show("cleared", ngx.shared.cache:flush_expired(0))"#
                .to_string(),
        ),
        (format!("{prefix}_write.lua"), write.to_string()),
    ]
}

/// Run `/PREFIX_write.lua` on the empty dict, then on the dict filled with
/// `n` entries (`ttl`: expired ones) that it must remove (nearly) all of to
/// make room: the second run's fuel exceeds the first's by 256 an entry
/// removed, exactly (before, removals were free: the two were equal). The
/// first run's fuel, and how many the second removed.
fn removals_cost_fuel(site: &Site, prefix: &str, n: usize, ttl: &str, answer: &str) -> (u64, u64) {
    let write = format!("/{prefix}_write.lua");
    let runs_before = common::site::logged()
        .lines()
        .filter(|line| line.contains(&format!(" {write} 200")))
        .count();
    assert!(ok_body(&site.get(&format!("/{prefix}_clear.lua"))).starts_with("cleared"));
    assert_eq!(ok_body(&site.get(&write)), answer);
    let quiet = fuel_of(&write, runs_before);
    assert!(ok_body(&site.get(&format!("/{prefix}_clear.lua"))).starts_with("cleared"));
    assert_eq!(
        ok_body(&site.get(&format!("/{prefix}_fill.lua?n={n}{ttl}"))),
        "filled\n"
    );
    assert_eq!(ok_body(&site.get(&write)), answer);
    let busy = fuel_of(&write, runs_before + 1);
    let left: usize = ok_body(&site.get(&format!("/{prefix}_count.lua")))
        .trim()
        .strip_prefix("left ")
        .and_then(|left| left.parse().ok())
        .expect("a count");
    // The entries left, expired or live, include what the write wrote.
    let removed = (n + 1 - left) as u64;
    assert!(removed >= n as u64 * 8 / 10, "{removed} of {n} removed");
    assert_eq!(
        busy,
        quiet + removed * 256,
        "{write}: fuel after removing {removed} entries, and with none to remove ({quiet})"
    );
    (quiet, removed)
}

/// One `set` of an 8 MB value into an 8 MiB memory dict that holds 40,000
/// small entries evicts about 38,000 of them; a `set` into a dict of 40,000
/// expired entries, or a push, removes them. Each removal costs the request
/// 256 fuel (counted from the access log against the same write into an
/// empty dict).
#[test]
fn removals_for_room_in_a_memory_dict_are_paid_for_in_fuel() {
    let set = r#"
local ok, err = ngx.shared.cache:set("big", string.rep("x", 8000000))
ngx.say(ok and "stored" or err)
"#;
    let push = r#"
local n, err = ngx.shared.cache:lpush("list", string.rep("x", 8000000))
ngx.say(n or err)
"#;
    let scripts: Vec<(String, String)> = [
        eviction_scripts("evict_fuel_set", set),
        eviction_scripts("evict_fuel_push", push),
    ]
    .concat();
    let scripts: Vec<(&str, &str)> = scripts
        .iter()
        .map(|(name, body)| (name.as_str(), body.as_str()))
        .collect();
    let site = site_limited(
        "dict_evict_fuel",
        "",
        "fuel = 100000000000\ntimeout_ms = 120000",
        "cache = \"8m\"",
        &scripts,
    );
    let (quiet, removed) = removals_cost_fuel(&site, "evict_fuel_set", 40000, "", "stored\n");
    removals_cost_fuel(&site, "evict_fuel_set", 40000, "&ttl=0.01", "stored\n");
    removals_cost_fuel(&site, "evict_fuel_push", 40000, "&ttl=0.01", "1\n");

    // With fuel for the write but not for half its evictions, the write
    // stops the request on its fuel limit (before: it completed).
    let limited = site_limited(
        "dict_evict_fuel_limit",
        "",
        &format!("fuel = {}\ntimeout_ms = 120000", quiet + removed * 128),
        "cache = \"8m\"",
        &scripts,
    );
    let write = "/evict_fuel_set_write.lua";
    assert_eq!(ok_body(&limited.get(write)), "stored\n");
    assert!(ok_body(&limited.get("/evict_fuel_set_clear.lua")).starts_with("cleared"));
    for from in (1..40000).step_by(5000) {
        let fill = format!("/evict_fuel_set_fill.lua?n=5000&from={from}");
        assert_eq!(ok_body(&limited.get(&fill)), "filled\n");
    }
    let reply = limited.get(write);
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(
        common::site::logged()
            .lines()
            .any(|line| { line.contains(&format!(" {write} 503")) && line.contains("limit-fuel") })
    );
}

/// On Redis, one `set` of 1.8 MB into a 2 MiB dict of 9,000 entries evicts
/// nearly all of them in about nine script calls (answering "again" after
/// each 1,024): each entry removed costs the request 256 fuel, the batches
/// before the last counted whole and the last call's own removals as it
/// reports them; the same for 9,000 expired entries.
#[test]
fn removals_for_room_on_redis_are_paid_for_in_fuel() {
    let redis = RedisServer::start("evict_fuel");
    let set = r#"
local ok, err = ngx.shared.cache:set("big", string.rep("x", 1800000))
ngx.say(ok and "stored" or err)
"#;
    let scripts = eviction_scripts("evict_fuel_redis", set);
    let scripts: Vec<(&str, &str)> = scripts
        .iter()
        .map(|(name, body)| (name.as_str(), body.as_str()))
        .collect();
    let site = site_limited(
        "dict_evict_fuel_redis",
        &redis.backend(""),
        "fuel = 100000000000\ntimeout_ms = 120000",
        "cache = \"2m\"",
        &scripts,
    );
    removals_cost_fuel(&site, "evict_fuel_redis", 9000, "", "stored\n");
    removals_cost_fuel(&site, "evict_fuel_redis", 9000, "&ttl=0.2", "stored\n");
}

/// 32 requests of one tenant at once, each making 300 Redis calls, hold at
/// most the tenant's share of the connection pool (16 of 64): Redis never
/// sees more than 16 connections from the server (plus the one asking).
#[test]
fn a_tenant_holds_at_most_its_share_of_redis_connections() {
    let redis = RedisServer::start("share");
    let site = site_limited(
        "dict_share_redis",
        &redis.backend(""),
        "timeout_ms = 120000",
        "cache = \"1m\"",
        &[(
            "busy.lua",
            r#"
local d = ngx.shared.cache
for i = 1, 300 do d:incr("n", 1, 0) end
show("done")
"#,
        )],
    );
    let done = std::sync::atomic::AtomicBool::new(false);
    let most = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let mut most = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(redis.connected_clients());
                std::thread::sleep(Duration::from_millis(5));
            }
            most
        });
        let replies = site.all_at_once("/busy.lua", 32);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        for reply in &replies {
            assert_eq!(ok_body(reply), "done\n");
        }
        watcher.join().unwrap()
    });
    assert!(most > 1, "the requests used Redis ({most} clients)");
    assert!(most <= 17, "{most} clients connected at once");
}

// ---------------------------------------------------------------------------
// Redis failures and deadlines
// ---------------------------------------------------------------------------

const BACKEND: &str = r#"
local d = ngx.shared.cache
show("get", d:get("x"))
show("set", d:set("x", 1))
show("incr", d:incr("x", 1))
"#;

const AFTER: &str = r#"
local d = ngx.shared.cache
show(d:set("y", 5))
show(d:incr("y", 1))
"#;

#[test]
fn an_unreachable_redis_is_a_lua_error() {
    // Nothing listens on the port of a listener just closed.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap()
        .port();
    let site = site(
        "dict_redis_down",
        &format!("shared_dicts_backend = \"redis://127.0.0.1:{port}/0\""),
        "cache = \"1m\"",
        &[("backend.lua", BACKEND)],
    );
    let body = ok_body(&site.get("/backend.lua")).to_string();
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 3, "{body}");
    for (line, op) in lines.iter().zip(["get", "set", "incr"]) {
        assert!(
            line.starts_with(&format!(
                "{op} nil shared dict backend: cannot connect to redis://127.0.0.1:{port}/0"
            )),
            "{body}"
        );
    }
}

#[test]
fn a_stalled_redis_times_out_or_ends_the_run() {
    let redis = RedisServer::start("stalled");
    let site = site(
        "dict_redis_stalled",
        &redis.backend("?timeout_ms=300"),
        "cache = \"1m\"",
        &[("backend.lua", BACKEND), ("after.lua", AFTER)],
    );
    assert_eq!(
        ok_body(&site.get("/backend.lua")),
        "get nil\nset true nil false\nincr 2\n"
    );
    redis.signal("-STOP");
    let body = ok_body(&site.get("/backend.lua")).to_string();
    let timed_out = format!(
        "nil shared dict backend: no answer from redis://127.0.0.1:{}/0 within 300 ms",
        redis.port
    );
    assert_eq!(
        body,
        format!("get {timed_out}\nset {timed_out}\nincr {timed_out}\n")
    );
    redis.signal("-CONT");
    // Fresh connections (what timed out was dropped); the abandoned
    // operations on "x" may still run when Redis resumes.
    assert_eq!(ok_body(&site.get("/after.lua")), "true nil false\n6\n");

    // A backend timeout longer than the run's time: the run's deadline ends
    // the wait and the run, as any wait.
    let slow = Site::start(
        "dict_redis_deadline",
        &redis.backend("?timeout_ms=60000"),
        "timeout_ms = 300",
        "shared_dicts = { cache = \"1m\" }",
        &[("root/backend.lua", &script(BACKEND))],
    );
    redis.signal("-STOP");
    let started = Instant::now();
    let reply = slow.get("/backend.lua");
    redis.signal("-CONT");
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(common::site::logged().contains("limit-time"));
}

// ---------------------------------------------------------------------------
// The server config key
// ---------------------------------------------------------------------------

#[test]
fn the_backend_key_is_checked() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dict_backend_key");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    let config = dir.join("moonwall.toml");
    for (value, expected) in [
        (
            "\"disk\"",
            "moonwall.toml:3:24: shared_dicts_backend: `disk` is not a backend: use \"memory\" or \"redis://host:port/db\"",
        ),
        (
            "\"redis://cache:port/0\"",
            "moonwall.toml:3:24: shared_dicts_backend: `port` is not a port",
        ),
        (
            "\"redis://cache?timeout_ms=0\"",
            "moonwall.toml:3:24: shared_dicts_backend: timeout_ms `0` is not a number of milliseconds",
        ),
    ] {
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\npolicies = \"policies\"\nshared_dicts_backend = {value}\n"
            ),
        )
        .unwrap();
        let error = moonwall::tenants::ServerConfig::load(&config)
            .expect_err(value)
            .to_string();
        assert!(
            error.contains(expected),
            "{value}: {error}\n(expected {expected})"
        );
    }
    for good in [
        "\"memory\"",
        "\"redis://:pw@127.0.0.1:6379/1?timeout_ms=100\"",
    ] {
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\npolicies = \"policies\"\nshared_dicts_backend = {good}\n"
            ),
        )
        .unwrap();
        moonwall::tenants::ServerConfig::load(&config).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
}
