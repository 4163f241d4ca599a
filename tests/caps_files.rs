//! Read-only files (`io.open`, `io.lines`), `require` from lib dirs and
//! `os.getenv`, end to end through a server; and every way out of the
//! granted directories refused.

use crate::common;

use common::site::Site;

/// `show(...)`: its arguments, `tostring`ed, joined with `|`, one line.
const SHOW: &str = r#"
local function show(...)
  local t = table.pack(...)
  for i = 1, t.n do t[i] = tostring(t[i]) end
  ngx.say(table.concat(t, "|"))
end
"#;

fn script(body: &str) -> String {
    format!("{SHOW}\n{body}")
}

/// The real path of a site's directory `relative`.
fn real(site: &Site, relative: &str) -> String {
    site.path(relative)
        .canonicalize()
        .unwrap()
        .display()
        .to_string()
}

/// A site whose policy grants `data` and `more` to read, `lib` and
/// `vendor` to require from, and the environment variable PATH.
fn granted_site(name: &str, limits: &str, files: &[(&str, &str)]) -> Site {
    let mut all = vec![
        (
            "data/hello.txt",
            "line one\nline two\n42 -3.5e1 0x10 nope\nrest",
        ),
        ("data/sub/inner.txt", "inner\n"),
        ("more/other.txt", "other\n"),
        ("secret.txt", "top secret\n"),
        (
            "lib/util.lua",
            "local name, file = ...\nreturn { name = name, file = file }\n",
        ),
        ("vendor/extra.lua", "return 'extra'\n"),
    ];
    all.extend_from_slice(files);
    Site::start(
        name,
        "",
        limits,
        r#"read_dirs = ["../data", "../more"]
lib_dirs = ["../lib", "../vendor"]
env = ["PATH", "MOONWALL_TEST_SURELY_UNSET"]"#,
        &all,
    )
}

#[track_caller]
fn assert_body(site: &Site, path: &str, expected: &str) {
    let reply = site.get(path);
    assert!(reply.is_ok_with(expected), "{path}: {reply:#?}");
}

#[test]
fn files_are_read_every_way() {
    let site = granted_site("files_read", "", &[]);
    site.write(
        "root/t.lua",
        &script(
            r#"
local f = assert(io.open("hello.txt"))
show(io.type(f), io.type(42), io.type(io.stdout))
show(f:read())
show(f:read("L"))
show(f:read("n", "*n", "n"))
show(f:read("n"))
show(f:read(3), f:read(0), f:read("a"))
show(f:read("a") == "", f:read("l"), f:read(0), f:read(1), f:read("n"))
show(f:close(), io.type(f), tostring(f))
show(pcall(f.read, f))
local f = assert(io.open("sub/inner.txt", "rb"))
show(f:read("a"))
f:close()
show(io.open("missing.txt"))
show(io.open("sub"))
"#,
        ),
    );
    assert_body(
        &site,
        "/t.lua",
        "file|nil|file\n\
         line one\n\
         line two\n\n\
         42|-35.0|16\n\
         nil\n\
         nop||e\nrest\n\
         true|nil|nil|nil|nil\n\
         true|closed file|file (closed)\n\
         false|attempt to use a closed file\n\
         inner\n\n\
         nil|missing.txt: No such file or directory|2\n\
         nil|sub: Is a directory|21\n",
    );
}

#[test]
fn absolute_paths_inside_granted_dirs_are_read() {
    let site = granted_site("files_absolute", "", &[]);
    let data = real(&site, "data");
    let more = real(&site, "more");
    site.write(
        "root/t.lua",
        &script(&format!(
            r#"
show(io.open("{data}/hello.txt"):read())
show(io.open("{data}//sub/./inner.txt"):read())
show(io.open("{more}/other.txt"):read())
-- relative paths are relative to the first granted directory
show(io.open("other.txt"))
local f, err, code = io.open("{data}")
show(f, err == "{data}: Is a directory", code)
"#
        )),
    );
    assert_body(
        &site,
        "/t.lua",
        "line one\ninner\nother\n\
         nil|other.txt: No such file or directory|2\n\
         nil|true|21\n",
    );
}

#[test]
fn lines_and_seek() {
    let mut lines = String::new();
    for i in 1..=5000 {
        lines.push_str(&format!("line {i}\n"));
    }
    let long = "x".repeat(40_000);
    let site = granted_site(
        "files_lines",
        "",
        &[
            ("data/many.txt", &lines),
            ("data/long.txt", &format!("{long}\nafter\n")),
            ("data/numbers.txt", "1 2 3\n4.5 0x1p4\n"),
        ],
    );
    site.write(
        "root/t.lua",
        &script(
            r#"
local count, last = 0, nil
for line in io.lines("many.txt") do count = count + 1 last = line end
show(count, last)
local sum = 0
for a in io.lines("numbers.txt", "n") do sum = sum + a end
show(sum)
for a, b in io.lines("numbers.txt", 1, "l") do show(a, b) break end
local f = assert(io.open("long.txt"))
local line = f:read("l")
show(#line, line == string.rep("x", 40000), f:read("l"), f:read("l"))
show(f:seek("set", 39998), f:read(5), f:seek(), f:seek("cur", -2), f:read("l"))
show(f:seek("end"), f:read(1), f:read("a"))
show(f:seek("end", -6), f:read("L"))
show(f:seek("set", -1))
show(pcall(function() return f:seek("sideways") end))
show(f:seek("set", 100000), f:read(1), f:read("a"))
local n = 0
for l in f:lines() do n = n + 1 end
show(n, io.type(f))
f:seek("set", 0)
show(#f:read(40001), f:read(100000))
f:close()
do
  local g <close> = assert(io.open("many.txt"))
  show(g:read("l"))
  kept = g
end
show(io.type(kept))
show(pcall(io.lines, "missing.txt"))
show(pcall(io.lines))
local iter = io.lines("numbers.txt")
show(iter(), iter(), iter(), pcall(iter))
"#,
        ),
    );
    assert_body(
        &site,
        "/t.lua",
        "5000|line 5000\n\
         26.5\n\
         1| 2 3\n\
         40000|true|after|nil\n\
         39998|xx\naf|40003|40001|after\n\
         40007|nil|\n\
         40001|after\n\n\
         nil|Invalid argument|22\n\
         false|t.lua:23: bad argument #1 to 'seek' (invalid option 'sideways')\n\
         100000|nil|\n\
         0|file\n\
         40001|after\n\n\
         line 1\n\
         closed file\n\
         false|missing.txt: No such file or directory\n\
         false|io.lines: moonwall has no standard input (give a file name)\n\
         1 2 3|4.5 0x1p4|nil|false|file is already closed\n",
    );
}

#[test]
fn require_loads_modules_from_lib_dirs() {
    let site = granted_site(
        "files_require",
        "",
        &[
            ("lib/pkg/init.lua", "return { init = true, name = ... }\n"),
            ("lib/a/b/c.lua", "return 'a.b.c'\n"),
            (
                "lib/uses.lua",
                "return require('util').name .. '+' .. require('extra')\n",
            ),
            ("lib/runtime.lua", "local x = 1\nerror('broken module')\n"),
            ("lib/syntax.lua", "x = = 1\n"),
            ("lib/both.lua", "return 'from lib'\n"),
            ("vendor/both.lua", "return 'from vendor'\n"),
        ],
    );
    site.write(
        "root/t.lua",
        &script(
            r#"
local util = require("util")
show(util.name, util.file, require("util") == util, package.loaded.util == util)
show(require("pkg").init, require("pkg").name)
show(require("a.b.c"), require("extra"), require("uses"), require("both"))
show(pcall(require, "runtime"))
show(pcall(require, "syntax"))
show(pcall(require, "nope.none"))
show(require("cjson") ~= nil, require("io") == io)
"#,
        ),
    );
    assert_body(
        &site,
        "/t.lua",
        "util|lib/util.lua|true|true\n\
         true|pkg\n\
         a.b.c|extra|util+extra|from lib|lib/both.lua\n\
         false|lib/runtime.lua:2: broken module\n\
         false|error loading module 'syntax' from file 'lib/syntax.lua':\n\
         \tlib/syntax.lua:1: unexpected symbol near '='\n\
         false|module 'nope.none' not found:\n\
         \tno built-in module 'nope.none'\n\
         \tno file 'lib/nope/none.lua'\n\
         \tno file 'lib/nope/none/init.lua'\n\
         \tno file 'vendor/nope/none.lua'\n\
         \tno file 'vendor/nope/none/init.lua'\n\
         true|true\n",
    );
    // A changed module is read again (the host's cache is per version).
    site.write(
        "root/v.lua",
        "ngx.say(require('util').name, (require('both')))",
    );
    assert_body(&site, "/v.lua", "utilfrom lib\n");
    site.write("lib/both.lua", "return 'changed, and longer'\n");
    assert_body(&site, "/v.lua", "utilchanged, and longer\n");
    std::fs::remove_file(site.path("lib/both.lua")).unwrap();
    assert_body(&site, "/v.lua", "utilfrom vendor\n");
}

#[test]
fn getenv_returns_granted_names_only() {
    let path = std::env::var("PATH").expect("the tests run with a PATH");
    let site = granted_site("files_env", "", &[]);
    site.write(
        "root/t.lua",
        &script(
            r#"
ngx.say(os.getenv("PATH"))
show(os.getenv("MOONWALL_TEST_SURELY_UNSET"))
show(os.getenv("HOME"))
show(os.getenv("HOME") or "default")
show(os.getenv("PATH\0x"))
show(pcall(function() return os.getenv() end))
"#,
        ),
    );
    assert_body(
        &site,
        "/t.lua",
        &format!(
            "{path}\n\
             nil\n\
             nil|os.getenv: HOME is not granted (policy [capabilities] env)\n\
             default\n\
             nil|os.getenv: PATH\0x is not granted (policy [capabilities] env)\n\
             false|t.lua:14: bad argument #1 to 'getenv' (string expected, got no value)\n"
        ),
    );
}

const DENIALS: &str = r#"
show(io.open("hello.txt"))
show(pcall(io.lines, "hello.txt"))
show(pcall(require, "util"))
show(os.getenv("PATH"))
io.write("written", 1, " ", 2.5, "\n")
show(io.stdout:write("a"):write("b\n") == io.stdout, io.stdout:close())
show(io.close(io.stdout))
show(io.stdout:read("a"))
show(io.stdout:seek())
show(io.stdout:flush(), io.stdout:setvbuf("no"), io.type(io.stdout))
show(pcall(io.stdout.write, "x"))
"#;

const DENIED: &str = "nil|io.open: hello.txt is not in a directory the policy grants ([capabilities] read_dirs)|13\n\
     false|io.open: hello.txt is not in a directory the policy grants ([capabilities] read_dirs)\n\
     false|module 'util' not found:\n\
     \tno built-in module 'util'\n\
     \tno lib_dirs granted (policy [capabilities] lib_dirs)\n\
     nil|os.getenv: PATH is not granted (policy [capabilities] env)\n";

/// What DENIALS shows of io.stdout (tab-separated, as print shows it).
const STDOUT_LINES: &str = "true\tnil\tcannot close standard file\n\
     nil\tcannot close standard file\n\
     nil\tBad file descriptor\t9\n\
     nil\tIllegal seek\t29\n\
     true\ttrue\tfile\n\
     false\tbad argument #1 to '?' (FILE* expected, got string)\n";

#[test]
fn nothing_is_granted_by_default() {
    let site = Site::start(
        "files_none",
        "",
        "",
        "log_level = \"notice\"",
        &[
            ("data/hello.txt", "hello\n"),
            ("lib/util.lua", "return 1\n"),
            ("root/t.lua", &script(DENIALS)),
        ],
    );
    // io.write goes to the run's output: in a request, the server's log, at
    // notice level.
    let reply = site.get("/t.lua");
    assert!(
        reply.is_ok_with(&format!("{DENIED}{}", STDOUT_LINES.replace('\t', "|"))),
        "{reply:#?}"
    );
    assert!(common::site::logged().contains("written1 2.5"));
}

#[test]
fn plain_runs_have_no_grants() {
    // print separates with tabs where show uses '|'; io.write goes to stdout.
    let out = common::stdout_of(&DENIALS.replace("show(", "print("));
    assert_eq!(
        out,
        format!(
            "{}written1 2.5\nab\n{STDOUT_LINES}",
            DENIED.replace('|', "\t")
        )
    );
}

#[test]
fn files_are_read_only() {
    let site = granted_site("files_readonly", "", &[]);
    site.write(
        "root/t.lua",
        &script(
            r#"
for _, mode in ipairs({ "w", "a", "r+", "w+b", "a+" }) do show(io.open("hello.txt", mode)) end
show(pcall(function() return io.open("hello.txt", "x") end))
show(pcall(function() return io.open("hello.txt", "rw") end))
local f = io.open("hello.txt", "rbb")
show(f:write("x"))
show(pcall(function() return f:write({}) end))
show(f:read("l"), f:flush(), f:setvbuf("no"))
"#,
        ),
    );
    assert_body(
        &site,
        "/t.lua",
        "nil|io.open: files are read-only in moonwall (mode \"w\")|30\n\
         nil|io.open: files are read-only in moonwall (mode \"a\")|30\n\
         nil|io.open: files are read-only in moonwall (mode \"r+\")|30\n\
         nil|io.open: files are read-only in moonwall (mode \"w+b\")|30\n\
         nil|io.open: files are read-only in moonwall (mode \"a+\")|30\n\
         false|t.lua:10: bad argument #2 to 'open' (invalid mode)\n\
         false|t.lua:11: bad argument #2 to 'open' (invalid mode)\n\
         nil|Bad file descriptor|9\n\
         false|t.lua:14: bad argument #1 to 'write' (string expected, got table)\n\
         line one|true|true\n",
    );
}

#[test]
fn paths_cannot_leave_the_granted_dirs() {
    let site = granted_site("files_escape", "", &[("data/sub/deeper/x.txt", "x\n")]);
    let data = site.path("data");
    let link = |target: &str, name: &str| {
        std::os::unix::fs::symlink(target, data.join(name)).unwrap();
    };
    link("../secret.txt", "out");
    link("/etc/passwd", "passwd");
    link("/proc/self/environ", "environ");
    link("..", "up");
    link("sub/../hello.txt", "alias");
    link(&real(&site, "secret.txt"), "absolute");
    link(&real(&site, "data/hello.txt"), "absolute_inside");
    let fifo = std::ffi::CString::new(data.join("fifo").display().to_string()).unwrap();
    // SAFETY: a valid C string; mkfifo only creates the file.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let secret = real(&site, "secret.txt");
    let data_real = real(&site, "data");
    site.write(
        "root/t.lua",
        &script(&format!(
            r#"
local paths = {{
  "../secret.txt", "sub/../../secret.txt", "sub/deeper/../../../secret.txt",
  "/etc/passwd", "/proc/self/environ", "{secret}", "{data_real}/../secret.txt",
  "{data_real}/sub/../../secret.txt", "{data_real}x/hello.txt",
  "out", "passwd", "environ", "up/secret.txt", "up/data/hello.txt", "absolute",
  "absolute_inside",
}}
-- the message with the real paths shown as SECRET and DATA
local function shorten(text)
  for _, pair in ipairs({{ {{ "{secret}", "SECRET" }}, {{ "{data_real}", "DATA" }} }}) do
    local at, last = text:find(pair[1], 1, true)
    if at then text = text:sub(1, at - 1) .. pair[2] .. text:sub(last + 1) end
  end
  return text
end
for _, path in ipairs(paths) do
  local f, err, code = io.open(path)
  show(f and f:read("a") or nil, err and shorten(err), code)
end
show(io.open("fifo"))
show(io.open("alias"):read())
show(io.open("sub/deeper/../../hello.txt"):read())
show(io.open("hello.txt\0../../secret.txt"))
show(io.open(string.rep("a/", 3000)))
"#
        )),
    );
    let denied = |path: &str| {
        format!(
            "nil|io.open: {path} is not in a directory the policy grants ([capabilities] read_dirs)|13\n"
        )
    };
    let mut expected = String::new();
    for path in [
        "../secret.txt",
        "sub/../../secret.txt",
        "sub/deeper/../../../secret.txt",
        "/etc/passwd",
        "/proc/self/environ",
        "SECRET",
        "DATA/../secret.txt",
        "DATA/sub/../../secret.txt",
        "DATAx/hello.txt",
        "out",
        "passwd",
        "environ",
        "up/secret.txt",
        "up/data/hello.txt",
        "absolute",
        "absolute_inside",
    ] {
        expected.push_str(&denied(path));
    }
    expected.push_str(
        "nil|io.open: fifo is not a regular file (only regular files can be read)|13\n\
         line one\n\
         line one\n\
         nil|io.open: hello.txt\0../../secret.txt: the path contains a zero byte|22\n\
         nil|io.open: path too long (at most 4096 bytes)|36\n",
    );
    assert_body(&site, "/t.lua", &expected);
}

#[test]
fn a_huge_file_only_costs_the_runs_memory() {
    let site = granted_site(
        "files_huge",
        "memory_mib = 24",
        &[
            (
                "root/chunks.lua",
                r#"
local f = assert(io.open("huge.bin"))
local total = 0
for i = 1, 96 do total = total + #f:read(1 << 20) end
ngx.say(total, " ", f:seek())
"#,
            ),
            (
                "root/whole.lua",
                r#"
local f = assert(io.open("huge.bin"))
local ok, err = pcall(f.read, f, "a")
ngx.say("not reached ", ok, " ", err)
"#,
            ),
            (
                "root/line.lua",
                r#"ngx.say(pcall(function() for l in io.lines("huge.bin") do end end))"#,
            ),
        ],
    );
    // A sparse file of 4 GiB: no disk space, any amount of zeros.
    let huge = std::fs::File::create(site.path("data/huge.bin")).unwrap();
    huge.set_len(4 << 30).unwrap();
    drop(huge);
    // Read in chunks, far more than the memory limit passes through.
    assert_body(&site, "/chunks.lua", "100663296 100663296\n");
    // Read whole, it stops the run at the memory limit (pcall cannot catch it).
    for path in ["/whole.lua", "/line.lua"] {
        let reply = site.get(path);
        assert_eq!(reply.status, 503, "{path}: {reply:#?}");
        assert!(!reply.body.contains("not reached"), "{reply:#?}");
    }
    assert!(common::site::logged().contains("memory limit of 24 MiB exceeded"));
}

#[test]
fn open_files_are_bounded_per_run() {
    let site = granted_site("files_many", "", &[]);
    site.write(
        "root/t.lua",
        &script(
            r#"
local kept = {}
for i = 1, 16 do kept[i] = assert(io.open("hello.txt")) end
show(io.open("hello.txt"))
kept[1]:close()
kept[1] = assert(io.open("hello.txt"))
show(io.open("sub/inner.txt"))
kept = nil
-- unreachable files are collected when the bound is hit
for i = 1, 200 do local f = assert(io.open("hello.txt")) end
for i = 1, 200 do local f = io.open("hello.txt") f:close() end
show("ok")
"#,
        ),
    );
    assert_body(
        &site,
        "/t.lua",
        "nil|io.open: too many open files (at most 16 per run)|24\n\
         nil|io.open: too many open files (at most 16 per run)|24\n\
         ok\n",
    );
}

#[test]
fn hostile_modules_are_refused() {
    let site = granted_site(
        "files_hostile_modules",
        "",
        &[
            ("lib/ok.lua", "return 'ok'\n"),
            ("secret.lua", "return 'secret'\n"),
        ],
    );
    let mut binary = b"\x1bLua\x54\x00".to_vec();
    binary.extend_from_slice(&[0; 64]);
    std::fs::write(site.path("lib/bin.lua"), &binary).unwrap();
    let mut big = "return 1\n".to_string();
    big.push_str(&"-".repeat(4 << 20));
    std::fs::write(site.path("lib/big.lua"), big).unwrap();
    std::os::unix::fs::symlink("../secret.lua", site.path("lib/out.lua")).unwrap();
    std::os::unix::fs::symlink("..", site.path("lib/up")).unwrap();
    std::fs::create_dir_all(site.path("lib/dir.lua")).unwrap();
    let long = "a".repeat(256);
    site.write(
        "root/t.lua",
        &script(&format!(
            r#"
local function try(name)
  local ok, err = pcall(require, name)
  show(ok, (tostring(err):gsub("\n.*", "")), (tostring(err):match("\t([^\n]*)$")))
end
try("bin")
try("big")
try("out")
try("up.secret")
try("dir")
for _, name in ipairs({{ "../secret", "/etc/passwd", "a/b", "a..b", ".a", "a.", "", "ok\0x", "{long}" }}) do
  try(name)
end
show(require("ok"))
"#
        )),
    );
    let not_name = |name: &str| {
        format!(
            "false|module '{name}' not found:|'{name}' is not a module name lib_dirs can hold (names of letters, digits, '_' and '-', separated by '.'; at most 255 bytes)\n"
        )
    };
    let mut expected = String::from(
        "false|error loading module 'bin' from file 'lib/bin.lua':|binary chunks are not allowed in the moonwall sandbox (only Lua source text is loaded)\n\
         false|error loading module 'big' from file 'lib/big.lua':|larger than 4 MiB\n\
         false|error loading module 'out' from file 'lib/out.lua':|it leads outside its lib directory (refused)\n\
         false|error loading module 'up.secret' from file 'lib/up/secret.lua':|it leads outside its lib directory (refused)\n\
         false|error loading module 'dir' from file 'lib/dir.lua':|not a regular file\n",
    );
    for name in ["../secret", "/etc/passwd", "a/b", "a..b", ".a", "a.", ""] {
        expected.push_str(&not_name(name));
    }
    expected.push_str("false|module 'ok' not found:|a module name cannot contain a zero byte\n");
    expected.push_str(&format!(
        "false|module '{long}' not found:|'{}...' is not a module name lib_dirs can hold (names of letters, digits, '_' and '-', separated by '.'; at most 255 bytes)\n",
        &long[..200]
    ));
    expected.push_str("ok|lib/ok.lua\n");
    assert_body(&site, "/t.lua", &expected);
}
