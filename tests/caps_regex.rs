//! ngx.re (match, find, gmatch, sub, gsub, split) on the host's linear-time
//! engine, end to end through a server: PCRE syntax and options, captures,
//! `ctx.pos`, templates, the features the engine refuses, and hostile
//! patterns and sizes. No policy key is involved: every tenant has ngx.re.

use crate::common;

use common::site::Site;

/// Serve `script` as `/t.lua` of a site with no capabilities granted; the
/// reply.
fn serve(name: &str, limits: &str, script: &str) -> common::site::Reply {
    let site = Site::start(name, "", limits, "", &[("root/t.lua", script)]);
    site.get("/t.lua")
}

#[track_caller]
fn assert_body(reply: &common::site::Reply, expected: &str) {
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.complete, "{reply:?}");
    assert_eq!(reply.body, expected);
}

#[test]
fn match_and_find_with_captures_and_ctx_pos() {
    let reply = serve(
        "re_match",
        "",
        r#"
-- numbered and named captures; an unmatched group is false
local m = ngx.re.match("hello, 1234 world", [[(?<word>\w+), (\d+)(x)?]])
ngx.say(m[0], "|", m[1], "|", m[2], "|", tostring(m[3]), "|", m.word)
-- no match: nil and no error
ngx.say(ngx.re.match("abc", [[\d]]))
-- a table to fill instead of a new one
local res = {}
local r = ngx.re.match("k=v", [[(\w)=(\w)]], nil, nil, res)
ngx.say(r == res, res[0], res[1], res[2])
-- ctx.pos: where to start (1-based), then just past the match
local ctx = { pos = 3 }
m = ngx.re.match("a1b2c3", [[\d]], nil, ctx)
ngx.say(m[0], " ", ctx.pos)
m = ngx.re.match("a1b2c3", [[\d]], nil, ctx)
ngx.say(m[0], " ", ctx.pos)
ctx.pos = 100
ngx.say(ngx.re.match("a1b2c3", [[\d]], nil, ctx), " ", ctx.pos)
-- find: 1-based inclusive positions, of the whole match or of group nth
ngx.say(ngx.re.find("hello world", "o w"))
ngx.say(ngx.re.find("hello world", "(l+)(o)", nil, nil, 2))
ngx.say(ngx.re.find("hello world", "(x)?world", nil, nil, 1))
ngx.say(ngx.re.find("hello world", "(o)", nil, nil, 2))
ctx = {}
ngx.say(ngx.re.find("abab", "b", "jo", ctx), " ", ctx.pos)
ngx.say(ngx.re.find("abab", "b", "jo", ctx), " ", ctx.pos)
ngx.say(ngx.re.find("abab", "b", "jo", ctx), " ", ctx.pos)
-- numbers are taken as strings
ngx.say(ngx.re.match(12345, 3)[0])
"#,
    );
    assert_body(
        &reply,
        "hello, 1234|hello|1234|false|hello\n\
         nil\n\
         truek=vkv\n\
         2 5\n\
         3 7\n\
         nil 100\n\
         57\n\
         55\n\
         nil\n\
         nilnilnth out of bound\n\
         2 3\n\
         4 5\n\
         nil 5\n\
         3\n",
    );
}

#[test]
fn gmatch_sub_gsub_and_split() {
    let reply = serve(
        "re_iterate",
        "",
        r#"
local out = {}
for m in ngx.re.gmatch("a1b22c333", [[([a-z])(\d+)]]) do out[#out + 1] = m[1] .. "=" .. m[2] end
ngx.say(table.concat(out, ","))
-- empty matches move on one character; many matches come in batches
out = {}
for m in ngx.re.gmatch("abc", "x*") do out[#out + 1] = "[" .. m[0] .. "]" end
ngx.say(table.concat(out))
local n = 0
for _ in ngx.re.gmatch(string.rep("ab", 20000), "b") do n = n + 1 end
ngx.say(n)
-- templates: $0, $1, ${1}, ${name}, $$; a group that does not exist is empty
ngx.say(ngx.re.sub("hello world", "o", "0"))
ngx.say(ngx.re.gsub("hello world", "(o)", "[$0$1${1}$$]"))
ngx.say(ngx.re.gsub("2024-05-06", [[(?<y>\d+)-(?<m>\d+)-(?<d>\d+)]], "${d}/${m}/$y"))
ngx.say(ngx.re.gsub("abc", "(b)", "<$2$9>"))
ngx.say(ngx.re.gsub("abc", "x", "y"))
ngx.say(ngx.re.gsub("abc", "", "-"))
-- a function gets the captures table
ngx.say(ngx.re.gsub("hello world", [[(?<v>[aeiou])]], function(m) return m.v:upper() end))
ngx.say(ngx.re.sub("a1b2", [[\d]], function(m) return m[0] * 10 end))
-- bad templates
ngx.say(ngx.re.gsub("abc", "b", "x$"))
ngx.say(ngx.re.gsub("abc", "b", "${1"))
ngx.say(ngx.re.gsub("abc", "b", "${nope}"))
-- split, as lua-resty-core's ngx.re.split
local re = require("ngx.re")
ngx.say(table.concat(re.split("a,b,,c,,", ","), "|"))
ngx.say(table.concat(re.split("a, b;c", [[([,;]) ?]]), "|"))
ngx.say(table.concat(re.split("a,b,c,d", ",", nil, nil, 2), "|"))
ngx.say(table.concat(re.split("abcd", ""), "|"))
ngx.say(table.concat(re.split("a,b,c", ",", nil, { pos = 3 }), "|"))
ngx.say(#re.split("", ","))
ngx.say(re.split == ngx.re.split)
"#,
    );
    assert_body(
        &reply,
        "a=1,b=22,c=333\n\
         [][][][]\n\
         20000\n\
         hell0 world1\n\
         hell[ooo$] w[ooo$]rld2\n\
         06/05/20241\n\
         a<>c1\n\
         abc0\n\
         -a-b-c-4\n\
         hEllO wOrld3\n\
         a10b21\n\
         nilnilfailed to compile the replacement template: invalid capturing variable name at byte 2\n\
         nilnilfailed to compile the replacement template: the closing bracket of the variable at byte 2 is missing\n\
         nilnilfailed to compile the replacement template: no group named \"nope\"\n\
         a|b||c\n\
         a|,|b|;|c\n\
         a|b,c,d\n\
         a|b|c|d\n\
         b|c\n\
         0\n\
         true\n",
    );
}

#[test]
fn options() {
    let reply = serve(
        "re_options",
        "",
        r#"
local function show(s, p, o)
  local m, err = ngx.re.match(s, p, o)
  ngx.say(m and m[0] or tostring(err))
end
show("HeLLo", "hello", "i")
show("a b", " a # the letter a\n [ ] b ", "x")
show("a\nb", "a.b", "s")
show("a\nb", "a.b", "")
show("x\nb", "^b", "m")
show("x\nb", "^b", "")
-- u: a character is UTF-8; without it, a byte
show("é", "^.$", "u")
show("é", "^.$", "")
show("é", "^..$", "")
show("\255", ".", "u")
show("\255a", "a", "U")
-- a: the match starts where the search does
show("xab", "ab", "a")
ngx.say(ngx.re.match("xab", "ab", "a", { pos = 2 })[0])
ngx.say(ngx.re.find("aXbX", [[\GX]], nil, { pos = 2 }))
ngx.say(ngx.re.find("aXbX", [[\GX]], nil, { pos = 3 }))
-- D: groups may share a name; each name gets the list of its captures
local m = ngx.re.match("hello, world", [[(?<w>\w+), (?<w>\w+)(?<z>z)?]], "D")
ngx.say(#m.w, " ", m.w[1], " ", m.w[2], " ", tostring(m.z))
show("ab", [[(?<w>a)(?<w>b)]], "")
-- o and j change nothing; bad letters are errors, as in OpenResty
show("abc", "b", "jo")
ngx.say(pcall(ngx.re.match, "abc", "b", "iz"))
ngx.say(pcall(ngx.re.find, "abc", "b", "d"))
-- inline options
show("aB", "a(?i)b", "")
show("AB", "(?i:a)b", "")
"#,
    );
    assert_body(
        &reply,
        "HeLLo\n\
         a b\n\
         a\nb\n\
         nil\n\
         b\n\
         nil\n\
         é\n\
         nil\n\
         é\n\
         the subject is not valid UTF-8 (at byte 0): the \"u\" option needs UTF-8, \"U\" skips this check\n\
         a\n\
         nil\n\
         ab\n\
         22\n\
         nil\n\
         2 hello world nil\n\
         failed to compile regex \"(?<w>a)(?<w>b)\": two named subpatterns have the same name \"w\" (the \"D\" option allows it)\n\
         b\n\
         falseunknown flag \"z\" (flags \"iz\")\n\
         falseflag \"d\" (DFA mode) is not supported (flags \"d\")\n\
         aB\n\
         nil\n",
    );
}

#[test]
fn what_needs_backtracking_is_refused_by_name() {
    let reply = serve(
        "re_unsupported",
        "",
        r#"
for _, p in ipairs({
  [[(a)\1]], [[(?<n>a)\k<n>]], [[a(?=b)]], [[a(?!b)]], [[(?<=a)b]], [[(?<!a)b]],
  [[(?>a+)b]], [[a*+b]], [[(a|(?R))]], [[(a)(?1)]], [[a\Kb]], [[(?(1)a|b)]], [[(*SKIP)a]],
}) do
  local m, err = ngx.re.match("ab", p)
  ngx.say(tostring(m), " ", err)
end
-- find and gsub report it their way
ngx.say(ngx.re.find("ab", [[(a)\1]]))
ngx.say(ngx.re.gsub("ab", [[(a)\1]], "x"))
ngx.say(ngx.re.gmatch("ab", [[(a)\1]]))
-- other compile errors
ngx.say(ngx.re.match("x", "(a"))
ngx.say(ngx.re.match("x", "[a"))
ngx.say(ngx.re.match("x", "*a"))
ngx.say(ngx.re.match("x", [[\p{L}]]))
ngx.say(ngx.re.match("x", "[[:nope:]]"))
"#,
    );
    let linear = "(moonwall's regex engine runs in linear time)";
    let expected = [
        (r"(a)\1", "backreferences are not supported"),
        (r"(?<n>a)\k<n>", "backreferences are not supported"),
        ("a(?=b)", "lookahead assertions are not supported"),
        ("a(?!b)", "lookahead assertions are not supported"),
        ("(?<=a)b", "lookbehind assertions are not supported"),
        ("(?<!a)b", "lookbehind assertions are not supported"),
        ("(?>a+)b", "atomic groups (?>...) are not supported"),
        (
            "a*+b",
            "possessive quantifiers (such as *+ or ++) are not supported",
        ),
        (
            "(a|(?R))",
            "recursion and subroutine calls are not supported",
        ),
        (
            "(a)(?1)",
            "recursion and subroutine calls are not supported",
        ),
        (r"a\Kb", r"\K is not supported"),
        ("(?(1)a|b)", "conditional groups (?(...) are not supported"),
        (
            "(*SKIP)a",
            "backtracking control verbs and (*...) settings are not supported",
        ),
    ];
    let mut body = String::new();
    for (pattern, what) in expected {
        body.push_str(&format!(
            "nil failed to compile regex \"{pattern}\": {what} {linear}\n"
        ));
    }
    let backref =
        format!("failed to compile regex \"(a)\\1\": backreferences are not supported {linear}");
    body.push_str(&format!("nilnil{backref}\nnilnil{backref}\nnil{backref}\n"));
    body.push_str(
        "nilfailed to compile regex \"(a\": missing closing parenthesis\n\
         nilfailed to compile regex \"[a\": missing terminating ] for character class\n\
         nilfailed to compile regex \"*a\": quantifier does not follow a repeatable item\n\
         nilfailed to compile regex \"\\p{L}\": \\p and \\P need the \"u\" option\n\
         nilfailed to compile regex \"[[:nope:]]\": unknown POSIX class name\n",
    );
    assert_body(&reply, &body);
}

#[test]
fn pathological_patterns_finish_quickly() {
    // With backtracking these take longer than the universe has left; the
    // request's own time limit would end them with a 503.
    let reply = serve(
        "re_pathological",
        "timeout_ms = 20000",
        r#"
local a = string.rep("a", 1000000)
ngx.say(ngx.re.match(a, [[(a*)*b]]))
ngx.say(ngx.re.find(string.rep("x", 1000000), [[(x+x+)+y]]))
ngx.say(ngx.re.match(string.rep("a", 100000) .. "!", [[^(a|aa|a?)+$]]))
local r, n = ngx.re.gsub(string.rep("ab", 100000), [[(a|ab)(c|bcd)?(d*)]], "")
ngx.say(#r, " ", n)
"#,
    );
    assert_body(&reply, "nil\nnil\nnil\n100000 100000\n");
}

#[test]
fn huge_patterns_are_refused() {
    let reply = serve(
        "re_huge",
        "",
        r#"
ngx.say(ngx.re.match("a", "a{100000}{100000}"))
ngx.say(ngx.re.match("a", "(?:a{60000}){60000}"))
ngx.say(ngx.re.match("a", "((a{1000}){1000}){1000}"))
ngx.say(ngx.re.match("a", string.rep("(", 300) .. "a" .. string.rep(")", 300)))
local _, err = ngx.re.match("a", string.rep("a", 40000))
ngx.say(err:match("pattern too long.*"))
-- what is refused leaves the engine usable
ngx.say(ngx.re.match("a", "a")[0])
"#,
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    let lines: Vec<&str> = reply.body.lines().collect();
    assert_eq!(lines.len(), 6, "{reply:?}");
    assert_eq!(
        lines[0],
        "nilfailed to compile regex \"a{100000}{100000}\": number too big in {} quantifier"
    );
    let too_big = "pattern too big: its compiled form exceeds 2097152 bytes";
    assert_eq!(
        lines[1],
        format!("nilfailed to compile regex \"(?:a{{60000}}){{60000}}\": {too_big}")
    );
    assert_eq!(
        lines[2],
        format!("nilfailed to compile regex \"((a{{1000}}){{1000}}){{1000}}\": {too_big}")
    );
    assert!(
        lines[3].starts_with("nilfailed to compile regex \"((((("),
        "{}",
        lines[3]
    );
    assert!(
        lines[3].ends_with("parentheses are too deeply nested (at most 200)"),
        "{}",
        lines[3]
    );
    assert_eq!(lines[4], "pattern too long (40000 bytes, at most 32768)");
    assert_eq!(lines[5], "a");
}

#[test]
fn giant_subjects_and_results_are_contained() {
    // Regex work is paid for by the work done (not by time): these runs
    // fit in the default fuel on any machine; only memory stops two of them.
    let site = Site::start(
        "re_giant",
        "",
        "memory_mib = 64\ntimeout_ms = 20000",
        "",
        &[
            (
                // 8 MiB subject, 4 million matches, in batches
                "root/many.lua",
                r#"
local s = string.rep("ab", 4 * 1024 * 1024)
local r, n = ngx.re.gsub(s, "b", "")
ngx.say(#r, " ", n)
local count = 0
for m in ngx.re.gmatch(s:sub(1, 400000), "(a)(b)") do count = count + 1 end
ngx.say(count)
ngx.say(#ngx.re.split(s:sub(1, 400000), "b"))
"#,
            ),
            (
                // would grow to 4 GiB: the run hits its memory limit
                "root/growth.lua",
                r#"
local r, n = ngx.re.gsub(string.rep("a", 4 * 1024 * 1024), "", string.rep("x", 1024))
ngx.say("unreachable ", #r)
"#,
            ),
            (
                "root/growth_fn.lua",
                r#"
local big = string.rep("x", 1024)
local r = ngx.re.gsub(string.rep("a", 4 * 1024 * 1024), "", function() return big end)
ngx.say("unreachable ", #r)
"#,
            ),
            ("root/after.lua", r#"ngx.say(ngx.re.gsub("abc", "b", "x"))"#),
        ],
    );
    let reply = site.get("/many.lua");
    assert_body(&reply, "4194304 4194304\n200000\n200000\n");
    for path in ["/growth.lua", "/growth_fn.lua"] {
        let reply = site.get(path);
        assert_eq!(reply.status, 503, "{path}: {reply:?}");
        assert!(!reply.body.contains("unreachable"));
    }
    assert!(common::site::logged().contains("limit-memory"));
    // the server goes on serving
    assert_body(&site.get("/after.lua"), "axc1\n");
}
