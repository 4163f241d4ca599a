//! The multi-tenant configuration as operators write it: the server config
//! (`moonwall.toml`), the policy files, the relations between tenants, the
//! limits a tenant ends up with, which tenant a host reaches, and
//! `moonwall check` on all of it. Every problem is asserted as the exact
//! `file:line:col: message` the server prints.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use moonwall::tenants::metrics::Metrics;
use moonwall::tenants::{Registry, ServerConfig, TenantSet, load_all};

/// A server directory for one test: `moonwall.toml`, `policies/`, and a
/// tenant root `www/` with one script, in the system's temp dir (removed
/// when the test passes). The path is real (symlinks resolved), as the
/// server shows the real paths of roots and scripts. It is kept short: Lua
/// shortens the names of scripts longer than 59 bytes in its messages (see
/// `check_names_scripts_with_long_paths`).
struct Site {
    dir: PathBuf,
}

impl Drop for Site {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Site {
    fn new(name: &str) -> Site {
        let dir = std::env::temp_dir().join(format!("mwp{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("policies")).unwrap();
        std::fs::create_dir_all(dir.join("www")).unwrap();
        let dir = dir.canonicalize().unwrap();
        let site = Site { dir };
        site.write("www/index.lua", "ngx.say('hi')\n");
        site
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.join(relative)
    }

    /// `relative` as the server prints it: the directory joined with it.
    fn shown(&self, relative: &str) -> String {
        self.path(relative).display().to_string()
    }

    fn write(&self, relative: &str, text: &str) -> PathBuf {
        let path = self.path(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    fn config(&self) -> PathBuf {
        self.path("moonwall.toml")
    }

    /// The server config with `text`, parsed.
    fn server(&self, text: &str) -> Result<ServerConfig, Vec<String>> {
        self.write("moonwall.toml", text);
        ServerConfig::load(&self.config()).map_err(|e| e.problems)
    }

    /// The problems of the server config `text`.
    #[track_caller]
    fn server_problems(&self, text: &str) -> Vec<String> {
        match self.server(text) {
            Ok(_) => panic!("the server config is accepted:\n{text}"),
            Err(problems) => problems,
        }
    }

    /// Load every policy under the server config `text`: the tenants that
    /// loaded and every problem.
    #[track_caller]
    fn load_all(&self, text: &str) -> (TenantSet, Vec<String>) {
        let config = self
            .server(text)
            .unwrap_or_else(|problems| panic!("server config: {problems:#?}"));
        let (set, report) = load_all(&config, &Metrics::new());
        (set, report.problems)
    }

    /// The problems of one policy file `policies/p.toml` under a plain
    /// server config.
    #[track_caller]
    fn policy_problems(&self, policy: &str) -> Vec<String> {
        self.write("policies/p.toml", policy);
        let (set, problems) = self.load_all(PLAIN_SERVER);
        assert!(set.tenants.is_empty(), "the policy is accepted: {policy}");
        problems
    }

    /// The registry of the server config `text` with its policies, which
    /// must load.
    #[track_caller]
    fn registry(&self, text: &str) -> Registry {
        let config = self
            .server(text)
            .unwrap_or_else(|problems| panic!("server config: {problems:#?}"));
        Registry::load(config, Metrics::new())
            .unwrap_or_else(|e| panic!("the tenants load: {:#?}", e.problems))
    }
}

const PLAIN_SERVER: &str = "policies = \"policies\"\n";

/// The policy file `p.toml` as the server names it.
fn p(site: &Site) -> String {
    site.shown("policies/p.toml")
}

// ---------------------------------------------------------------------
// The server config
// ---------------------------------------------------------------------

#[test]
fn server_config_unknown_key() {
    let site = Site::new("server-unknown-key");
    assert_eq!(
        site.server_problems("policies = \"policies\"\nlisten_on = \"127.0.0.1:80\"\n"),
        [format!(
            "{}:2:1: unknown field `listen_on`, expected one of `listen`, `tls_listen`, `tls`, `metrics_listen`, `policies`, `default_tenant`, `allowed_roots`, `reload_poll_ms`, `shared_dicts_backend`, `tls_ca_file`, `limits`, `connections`, `upstreams`",
            site.config().display()
        )]
    );
    // An unknown ceiling too.
    assert_eq!(
        site.server_problems("policies = \"policies\"\n\n[limits]\nfuel = 10\ncpu_ms = 10\n"),
        [format!(
            "{}:5:1: unknown field `cpu_ms`, expected one of `fuel`, `timeout_ms`, `memory_mib`, `max_request_body_kib`, `max_response_body_kib`, `max_concurrency`, `max_queue`, `queue_timeout_ms`, `requests_per_second`, `burst`, `max_in_flight`",
            site.config().display()
        )]
    );
}

#[test]
fn server_config_wrong_type() {
    let site = Site::new("server-wrong-type");
    let config = site.config().display().to_string();
    assert_eq!(
        site.server_problems("policies = 5\n"),
        [format!(
            "{config}:1:12: invalid type: integer `5`, expected path string"
        )]
    );
    assert_eq!(
        site.server_problems("policies = \"policies\"\nreload_poll_ms = \"1s\"\n"),
        [format!(
            "{config}:2:18: invalid type: string \"1s\", expected u64"
        )]
    );
    assert_eq!(
        site.server_problems("policies = \"policies\"\n[limits]\ntimeout_ms = -1\n"),
        [format!(
            "{config}:3:14: invalid value: integer `-1`, expected u64"
        )]
    );
    // `policies` is the one required key.
    assert_eq!(
        site.server_problems("listen = \"127.0.0.1:8080\"\n"),
        [format!("{config}:1:1: missing field `policies`")]
    );
}

#[test]
fn server_config_listen_must_be_addresses() {
    let site = Site::new("server-listen");
    let config = site.config().display().to_string();
    assert_eq!(
        site.server_problems("listen = \"localhost:8080\"\npolicies = \"policies\"\n"),
        [format!(
            "{config}:1:10: `localhost:8080` is not an address like 127.0.0.1:8080"
        )]
    );
    assert_eq!(
        site.server_problems("listen = 8080\npolicies = \"policies\"\n"),
        [format!(
            "{config}:1:10: listen must be an address like \"127.0.0.1:8080\" or a list of them"
        )]
    );
    assert_eq!(
        site.server_problems("policies = \"policies\"\nmetrics_listen = \"127.0.0.1\"\n"),
        [format!(
            "{config}:2:18: `127.0.0.1` is not an address like 127.0.0.1:8080"
        )]
    );
    // Good addresses, one or a list, are taken in order.
    let server = site
        .server("listen = [\"127.0.0.1:8080\", \"[::1]:8081\"]\npolicies = \"policies\"\n")
        .unwrap();
    assert_eq!(
        server.listen,
        [
            "127.0.0.1:8080".parse().unwrap(),
            "[::1]:8081".parse().unwrap()
        ]
    );
}

#[test]
fn server_config_listen_list_with_one_bad_address() {
    let site = Site::new("server-listen-list");
    let config = site.config().display().to_string();
    let problems = site.server_problems(
        "listen = [\"127.0.0.1:8080\", \"nope\", \"[::1]:8080\"]\npolicies = \"policies\"\n",
    );
    // The place is the bad entry's.
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0].starts_with(&format!("{config}:1:29:"))
            && problems[0].ends_with(": `nope` is not an address like 127.0.0.1:8080"),
        "{problems:#?}"
    );
    // Each bad entry is reported, a non-string one too.
    let problems =
        site.server_problems("listen = [\"a\", 80, \"127.0.0.1:8080\"]\npolicies = \"policies\"\n");
    assert_eq!(problems.len(), 2, "{problems:#?}");
    // In the file's order: the list (for the entry that is not a string),
    // then the bad entry.
    assert!(
        problems[0]
            .ends_with(": listen must be an address like \"127.0.0.1:8080\" or a list of them"),
        "{problems:#?}"
    );
    assert!(
        problems[1].ends_with(": `a` is not an address like 127.0.0.1:8080"),
        "{problems:#?}"
    );
}

#[test]
fn server_config_bad_listen_entry_is_reported_at_the_entry() {
    let site = Site::new("server-listen-entry");
    let config = site.config().display().to_string();
    assert_eq!(
        site.server_problems(
            "listen = [\n  \"127.0.0.1:8080\",\n  \"nope\",\n]\npolicies = \"policies\"\n"
        ),
        [format!(
            "{config}:3:3: `nope` is not an address like 127.0.0.1:8080"
        )]
    );
}

#[test]
fn server_config_policies_must_be_a_directory() {
    let site = Site::new("server-policies-dir");
    let config = site.config().display().to_string();
    assert_eq!(
        site.server_problems("policies = \"nowhere\"\n"),
        [format!(
            "{config}:1:12: policies nowhere is not a directory"
        )]
    );
    // A file is not a directory either.
    assert_eq!(
        site.server_problems("policies = \"www/index.lua\"\n"),
        [format!(
            "{config}:1:12: policies www/index.lua is not a directory"
        )]
    );
    // Nor is an allowed root that does not exist.
    assert_eq!(
        site.server_problems("policies = \"policies\"\nallowed_roots = [\"www\", \"sites\"]\n"),
        [format!(
            "{config}:2:25: allowed root sites is not a directory"
        )]
    );
}

#[test]
fn server_config_default_tenant_must_name_a_tenant() {
    let site = Site::new("server-default-tenant");
    site.write(
        "policies/a.toml",
        "tenant = \"a\"\nhosts = [\"a.example\"]\nroot = \"../www\"\n",
    );
    site.write(
        "moonwall.toml",
        "policies = \"policies\"\ndefault_tenant = \"ghost\"\n",
    );
    let config = ServerConfig::load(&site.config()).expect("the server config itself is fine");
    let problems = Registry::load(config, Metrics::new())
        .err()
        .expect("an unknown default tenant is an error")
        .problems;
    assert_eq!(
        problems,
        [format!(
            "{}:2:18: default_tenant `ghost` is not a tenant in {}",
            site.config().display(),
            site.shown("policies")
        )]
    );
    // The default tenant's name is enough.
    site.registry("policies = \"policies\"\ndefault_tenant = \"a\"\n");
}

#[test]
fn server_config_default_tenant_place_ignores_comments() {
    let site = Site::new("server-default-tenant-comment");
    site.write(
        "policies/a.toml",
        "tenant = \"a\"\nhosts = [\"a.example\"]\nroot = \"../www\"\n",
    );
    site.write(
        "moonwall.toml",
        "# default_tenant: where unknown hosts go\npolicies = \"policies\"\ndefault_tenant = \"ghost\"\n",
    );
    let config = ServerConfig::load(&site.config()).unwrap();
    let problems = Registry::load(config, Metrics::new())
        .err()
        .unwrap()
        .problems;
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0].starts_with(&format!("{}:3:", site.config().display())),
        "the place is line 1, the comment: {problems:#?}"
    );
}

#[test]
fn server_config_reload_poll_ms_at_most_an_hour() {
    let site = Site::new("server-reload-poll");
    assert_eq!(
        site.server_problems("policies = \"policies\"\nreload_poll_ms = 3600001\n"),
        [format!(
            "{}:2:18: reload_poll_ms must be at most 3600000 (0: only on SIGHUP)",
            site.config().display()
        )]
    );
    let at_most = site
        .server("policies = \"policies\"\nreload_poll_ms = 3600000\n")
        .unwrap();
    assert_eq!(at_most.reload_poll, Some(Duration::from_secs(3600)));
    let sighup_only = site
        .server("policies = \"policies\"\nreload_poll_ms = 0\n")
        .unwrap();
    assert_eq!(sighup_only.reload_poll, None);
    let default = site.server(PLAIN_SERVER).unwrap();
    assert_eq!(default.reload_poll, Some(Duration::from_secs(1)));
}

#[test]
fn server_config_ceilings_in_range() {
    let site = Site::new("server-ceilings");
    let config = site.config().display().to_string();
    assert_eq!(
        site.server_problems("policies = \"policies\"\n\n[limits]\nmemory_mib = 1\n"),
        [format!(
            "{config}:4:14: memory_mib must be between 2 and 4095"
        )]
    );
    assert_eq!(
        site.server_problems(
            "policies = \"policies\"\n[limits]\nfuel = 0\ntimeout_ms = 3600001\nmemory_mib = 4096\nmax_concurrency = 10001\n"
        ),
        [
            format!("{config}:3:8: fuel must be between 1 and 18446744073709551614"),
            format!("{config}:4:14: timeout_ms must be between 1 and 3600000"),
            format!("{config}:5:14: memory_mib must be between 2 and 4095"),
            format!("{config}:6:19: max_concurrency must be between 1 and 10000"),
        ]
    );
}

#[test]
fn server_config_lists_every_problem() {
    let site = Site::new("server-every-problem");
    let config = site.config().display().to_string();
    assert_eq!(
        site.server_problems(
            "listen = \"x\"\npolicies = \"none\"\nreload_poll_ms = 99999999\n[limits]\nburst = 0\n"
        ),
        [
            format!("{config}:1:10: `x` is not an address like 127.0.0.1:8080"),
            format!("{config}:2:12: policies none is not a directory"),
            format!("{config}:3:18: reload_poll_ms must be at most 3600000 (0: only on SIGHUP)"),
            format!("{config}:5:9: burst must be between 1 and 1000000"),
        ]
    );
}

// ---------------------------------------------------------------------
// One policy file
// ---------------------------------------------------------------------

#[test]
fn policy_unknown_key_at_top_level() {
    let site = Site::new("policy-unknown-top");
    assert_eq!(
        site.policy_problems("tenant = \"a\"\nroot = \"../www\"\nhost = \"a.example\"\n"),
        [format!(
            "{}:3:1: unknown field `host`, expected one of `tenant`, `hosts`, `root`, `serve_static`, `tls`, `init_script`, `limits`, `capabilities`, `location`",
            p(&site)
        )]
    );
}

#[test]
fn policy_unknown_key_in_limits() {
    let site = Site::new("policy-unknown-limits");
    assert_eq!(
        site.policy_problems(
            "tenant = \"a\"\nroot = \"../www\"\n\n[limits]\ntimeout_ms = 100\ntimeout = 100\n"
        ),
        [format!(
            "{}:6:1: unknown field `timeout`, expected one of `fuel`, `timeout_ms`, `memory_mib`, `max_request_body_kib`, `max_response_body_kib`, `max_concurrency`, `max_queue`, `queue_timeout_ms`, `requests_per_second`, `burst`, `max_in_flight`",
            p(&site)
        )]
    );
}

#[test]
fn policy_unknown_key_in_capabilities() {
    let site = Site::new("policy-unknown-capabilities");
    assert_eq!(
        site.policy_problems(
            "tenant = \"a\"\nroot = \"../www\"\n\n[capabilities]\nlog_level = \"info\"\nfilesystem = true\n"
        ),
        [format!(
            "{}:6:1: unknown field `filesystem`, expected one of `shared_dicts`, `outbound`, `outbound_private`, `outbound_max_connections`, `outbound_max_sockets`, `outbound_max_receive_kib`, `outbound_connect_timeout_ms`, `outbound_send_timeout_ms`, `outbound_read_timeout_ms`, `outbound_keepalive_pool`, `outbound_keepalive_timeout_ms`, `outbound_max_tenant_sockets`, `outbound_tls_no_verify`, `upstreams`, `read_dirs`, `lib_dirs`, `env`, `log_level`",
            p(&site)
        )]
    );
}

#[test]
fn policy_wrong_types() {
    let site = Site::new("policy-wrong-type");
    let p = p(&site);
    assert_eq!(
        site.policy_problems("tenant = \"a\"\nhosts = \"a.example\"\nroot = \"../www\"\n"),
        [format!(
            "{p}:2:9: invalid type: string \"a.example\", expected a sequence"
        )]
    );
    assert_eq!(
        site.policy_problems("tenant = \"a\"\nroot = \"../www\"\n[limits]\ntimeout_ms = \"500\"\n"),
        [format!(
            "{p}:4:14: invalid type: string \"500\", expected u64"
        )]
    );
    assert_eq!(
        site.policy_problems("tenant = \"a\"\nroot = \"../www\"\nserve_static = \"no\"\n"),
        [format!(
            "{p}:3:16: invalid type: string \"no\", expected a boolean"
        )]
    );
    assert_eq!(
        site.policy_problems("tenant = 7\nroot = \"../www\"\n"),
        [format!(
            "{p}:1:10: invalid type: integer `7`, expected a string"
        )]
    );
}

#[test]
fn policy_missing_tenant_or_root() {
    let site = Site::new("policy-missing");
    let p = p(&site);
    assert_eq!(
        site.policy_problems("hosts = [\"a.example\"]\nroot = \"../www\"\n"),
        [format!("{p}:1:1: missing field `tenant`")]
    );
    assert_eq!(
        site.policy_problems("tenant = \"a\"\nhosts = [\"a.example\"]\n"),
        [format!("{p}:1:1: missing field `root`")]
    );
}

#[test]
fn policy_bad_tenant_name() {
    let site = Site::new("policy-tenant-name");
    let p = p(&site);
    for (name, col) in [("a b", 10), ("", 10), ("a.b", 10), ("é", 10)] {
        assert_eq!(
            site.policy_problems(&format!("tenant = \"{name}\"\nroot = \"../www\"\n")),
            [format!(
                "{p}:1:{col}: tenant name `{name}`: use 1 to 64 letters, digits, '_' and '-'"
            )]
        );
    }
    let long = "x".repeat(65);
    assert_eq!(
        site.policy_problems(&format!("tenant = \"{long}\"\nroot = \"../www\"\n")),
        [format!(
            "{p}:1:10: tenant name `{long}`: use 1 to 64 letters, digits, '_' and '-'"
        )]
    );
    // 64 of them, '-' and '_' are fine.
    site.write(
        "policies/p.toml",
        &format!(
            "tenant = \"{}\"\nroot = \"../www\"\n",
            "a-_".repeat(21) + "z"
        ),
    );
    let (set, problems) = site.load_all(PLAIN_SERVER);
    assert_eq!((set.tenants.len(), problems), (1, Vec::<String>::new()));
}

#[test]
fn policy_bad_host_patterns() {
    let site = Site::new("policy-bad-hosts");
    let p = p(&site);
    let not_a_host = |host: &str| {
        format!(
            "`{host}` is not a host name (like example.com) or a wildcard (like *.example.com); ports are not part of it"
        )
    };
    assert_eq!(
        site.policy_problems("tenant = \"a\"\nhosts = [\"a:80\", \"*.\", \"ok.example\", \"a..b\"]\nroot = \"../www\"\n"),
        [
            format!("{p}:2:10: {}", not_a_host("a:80")),
            format!("{p}:2:18: {}", not_a_host("*.")),
            format!("{p}:2:38: {}", not_a_host("a..b")),
        ]
    );
    assert_eq!(
        site.policy_problems(
            "tenant = \"a\"\nhosts = [\n  \"*\",\n  \"a.*.b\",\n  \"http://a.example\",\n]\nroot = \"../www\"\n"
        ),
        [
            format!("{p}:3:3: {}", not_a_host("*")),
            format!("{p}:4:3: {}", not_a_host("a.*.b")),
            format!("{p}:5:3: {}", not_a_host("http://a.example")),
        ]
    );
}

#[test]
fn policy_same_host_twice() {
    let site = Site::new("policy-same-host");
    let p = p(&site);
    // Case does not make it another host; a wildcard covering an exact name
    // of the same tenant is the same mistake.
    assert_eq!(
        site.policy_problems(
            "tenant = \"a\"\nhosts = [\"a.example\", \"A.Example\", \"*.b.example\", \"x.b.example\"]\nroot = \"../www\"\n"
        ),
        [
            format!("{p}:2:23: host `A.Example` overlaps `a.example` of the same tenant ({p}:2:10)"),
            format!("{p}:2:51: host `x.b.example` overlaps `*.b.example` of the same tenant ({p}:2:36)"),
        ]
    );
}

#[test]
fn policy_impossible_limits() {
    let site = Site::new("policy-impossible-limits");
    let p = p(&site);
    assert_eq!(
        site.policy_problems(
            "tenant = \"a\"\nroot = \"../www\"\n\n[limits]\nfuel = 0\nmemory_mib = 1\nmax_concurrency = 0\nrequests_per_second = 0\n"
        ),
        [
            format!("{p}:5:8: fuel must be between 1 and 18446744073709551614"),
            format!("{p}:6:14: memory_mib must be between 2 and 4095"),
            format!("{p}:7:19: max_concurrency must be between 1 and 10000"),
            format!("{p}:8:23: requests_per_second must be between 1 and 1000000"),
        ]
    );
    assert_eq!(
        site.policy_problems(
            "tenant = \"a\"\nroot = \"../www\"\n[limits]\ntimeout_ms = 0\nmax_request_body_kib = 1048577\nmax_queue = 100001\nqueue_timeout_ms = 0\nburst = 0\n"
        ),
        [
            format!("{p}:4:14: timeout_ms must be between 1 and 3600000"),
            format!("{p}:5:24: max_request_body_kib must be between 0 and 1048576"),
            format!("{p}:6:13: max_queue must be between 0 and 100000"),
            format!("{p}:7:20: queue_timeout_ms must be between 1 and 3600000"),
            format!("{p}:8:9: burst must be between 1 and 1000000"),
        ]
    );
}

#[test]
fn policy_value_above_the_servers_ceiling() {
    let site = Site::new("policy-above-ceiling");
    let p = p(&site);
    let config = site.config().display().to_string();
    site.write(
        "policies/p.toml",
        "tenant = \"a\"\nroot = \"../www\"\n\n[limits]\ntimeout_ms = 2000\nmemory_mib = 64\nfuel = 1000\n",
    );
    let (set, problems) = site.load_all(
        "policies = \"policies\"\n\n[limits]\nfuel = 1000\ntimeout_ms = 1000\nmemory_mib = 32\n",
    );
    assert!(set.tenants.is_empty());
    assert_eq!(
        problems,
        [
            format!(
                "{p}:5:14: timeout_ms = 2000 is above the server's ceiling of 1000 ({config}:5:14)"
            ),
            format!(
                "{p}:6:14: memory_mib = 64 is above the server's ceiling of 32 ({config}:6:14)"
            ),
        ]
    );
}

#[test]
fn policy_root_must_exist() {
    let site = Site::new("policy-root-missing");
    assert_eq!(
        site.policy_problems("tenant = \"a\"\nroot = \"../nowhere\"\n"),
        [format!("{}:2:8: ../nowhere is not a directory", p(&site))]
    );
    // A file is not a root.
    assert_eq!(
        site.policy_problems("tenant = \"a\"\nroot = \"../www/index.lua\"\n"),
        [format!(
            "{}:2:8: ../www/index.lua is not a directory",
            p(&site)
        )]
    );
}

#[test]
fn policy_root_outside_the_allowed_roots() {
    let site = Site::new("policy-root-outside");
    std::fs::create_dir_all(site.path("sites/blog")).unwrap();
    std::fs::create_dir_all(site.path("outside")).unwrap();
    let server = "policies = \"policies\"\nallowed_roots = [\"sites\"]\n";
    let allowed = site.shown("sites");

    site.write("policies/p.toml", "tenant = \"a\"\nroot = \"../outside\"\n");
    let (set, problems) = site.load_all(server);
    assert!(set.tenants.is_empty());
    assert_eq!(
        problems,
        [format!(
            "{}:2:8: ../outside is outside the allowed roots ({allowed})",
            p(&site)
        )]
    );

    // Through a symlink inside the allowed root that points out of it.
    std::os::unix::fs::symlink(site.path("outside"), site.path("sites/escape")).unwrap();
    site.write(
        "policies/p.toml",
        "tenant = \"a\"\nroot = \"../sites/escape\"\n",
    );
    let (set, problems) = site.load_all(server);
    assert!(set.tenants.is_empty());
    assert_eq!(
        problems,
        [format!(
            "{}:2:8: ../sites/escape is outside the allowed roots ({allowed})",
            p(&site)
        )]
    );

    // With `..` that climbs out.
    site.write(
        "policies/p.toml",
        "tenant = \"a\"\nroot = \"../sites/blog/../../outside\"\n",
    );
    let (_, problems) = site.load_all(server);
    assert_eq!(
        problems,
        [format!(
            "{}:2:8: ../sites/blog/../../outside is outside the allowed roots ({allowed})",
            p(&site)
        )]
    );

    // Inside, it loads, with its real path.
    site.write(
        "policies/p.toml",
        "tenant = \"a\"\nroot = \"../sites/blog\"\n",
    );
    let (set, problems) = site.load_all(server);
    assert_eq!(problems, Vec::<String>::new());
    assert_eq!(set.tenants[0].name, "a");
}

#[test]
fn policy_location_script_missing() {
    let site = Site::new("policy-location-missing");
    assert_eq!(
        site.policy_problems(
            "tenant = \"a\"\nroot = \"../www\"\n\n[[location]]\npath = \"/api/\"\ncontent = \"api.lua\"\n"
        ),
        [format!(
            "{}:6:11: script {} not found",
            p(&site),
            site.shown("www/api.lua")
        )]
    );
}

#[test]
fn policy_location_script_outside_the_allowed_roots() {
    let site = Site::new("policy-location-outside");
    site.write("sites/blog/index.lua", "ngx.say('blog')\n");
    site.write("outside/steal.lua", "ngx.say('outside')\n");
    std::os::unix::fs::symlink(
        site.path("outside/steal.lua"),
        site.path("sites/blog/linked.lua"),
    )
    .unwrap();
    let server = "policies = \"policies\"\nallowed_roots = [\"sites\"]\n";
    site.write(
        "policies/p.toml",
        "tenant = \"a\"\nroot = \"../sites/blog\"\n\n[[location]]\npath = \"/x\"\ncontent = \"../../outside/steal.lua\"\n\n[[location]]\npath = \"/y\"\naccess = \"linked.lua\"\ncontent = \"index.lua\"\n",
    );
    let (set, problems) = site.load_all(server);
    assert!(set.tenants.is_empty());
    assert_eq!(
        problems,
        [
            format!(
                "{}:6:11: script {} is outside the allowed roots",
                p(&site),
                site.shown("sites/blog/../../outside/steal.lua")
            ),
            format!(
                "{}:10:10: script {} is outside the allowed roots",
                p(&site),
                site.shown("sites/blog/linked.lua")
            ),
        ]
    );
}

#[test]
fn policy_bad_shared_dict_sizes() {
    let site = Site::new("policy-dicts");
    let p = p(&site);
    assert_eq!(
        site.policy_problems(
            "tenant = \"a\"\nroot = \"../www\"\n[capabilities]\nshared_dicts = { cache = \"10x\", huge = \"2g\", none = \"0\", good = \"10m\" }\n"
        ),
        [
            format!("{p}:4:26: shared dict `cache`: `10x` is not a size between 1 and 1g (like \"10m\")"),
            format!("{p}:4:40: shared dict `huge`: `2g` is not a size between 1 and 1g (like \"10m\")"),
            format!("{p}:4:53: shared dict `none`: `0` is not a size between 1 and 1g (like \"10m\")"),
        ]
    );
    assert_eq!(
        site.policy_problems(
            "tenant = \"a\"\nroot = \"../www\"\n[capabilities.shared_dicts]\n\"a.b\" = \"1m\"\n"
        ),
        [format!(
            "{p}:4:9: shared dict name `a.b`: use letters, digits, '_' and '-'"
        )]
    );
}

#[test]
fn policy_bad_outbound_destinations() {
    let site = Site::new("policy-outbound");
    let p = p(&site);
    let bad = |text: &str| {
        format!(
            "outbound `{text}` is not scheme://host[:port] (scheme http, https or tcp; host a name, *.name or an address)"
        )
    };
    assert_eq!(
        site.policy_problems(
            "tenant = \"a\"\nroot = \"../www\"\n[capabilities]\noutbound = [\n  \"ftp://x\",\n  \"tcp://host\",\n  \"https://api.example.com\",\n  \"http://a.example:0\",\n  \"https://a.example/path\",\n  \"api.example.com\",\n]\n"
        ),
        [
            format!("{p}:5:3: {}", bad("ftp://x")),
            format!("{p}:6:3: outbound `tcp://host`: a tcp destination needs a port"),
            format!("{p}:8:3: {}", bad("http://a.example:0")),
            format!("{p}:9:3: {}", bad("https://a.example/path")),
            format!("{p}:10:3: {}", bad("api.example.com")),
        ]
    );
}

#[test]
fn policy_outbound_ipv6_without_port() {
    let site = Site::new("policy-outbound-ipv6");
    site.write(
        "policies/p.toml",
        "tenant = \"a\"\nroot = \"../www\"\n[capabilities]\noutbound = [\"https://[::1]\"]\n",
    );
    let (set, problems) = site.load_all(PLAIN_SERVER);
    assert_eq!(problems, Vec::<String>::new());
    assert_eq!(set.tenants[0].capabilities.tcp.outbound, ["https://[::1]"]);
}

#[test]
fn policy_bad_env_names() {
    let site = Site::new("policy-env");
    let p = p(&site);
    assert_eq!(
        site.policy_problems(
            "tenant = \"a\"\nroot = \"../www\"\n[capabilities]\nenv = [\"1X\", \"A-B\", \"OK_1\", \"\"]\n"
        ),
        [
            format!("{p}:4:8: `1X` is not an environment variable name"),
            format!("{p}:4:14: `A-B` is not an environment variable name"),
            format!("{p}:4:29: `` is not an environment variable name"),
        ]
    );
}

#[test]
fn policy_unknown_log_level() {
    let site = Site::new("policy-log-level");
    assert_eq!(
        site.policy_problems(
            "tenant = \"a\"\nroot = \"../www\"\n[capabilities]\nlog_level = \"verbose\"\n"
        ),
        [format!(
            "{}:4:13: log_level `verbose` is not one of stderr, emerg, alert, crit, error, warn, notice, info, debug",
            p(&site)
        )]
    );
}

#[test]
fn policy_granted_dirs_must_exist_inside_the_allowed_roots() {
    let site = Site::new("policy-granted-dirs");
    std::fs::create_dir_all(site.path("sites/blog/lib")).unwrap();
    std::fs::create_dir_all(site.path("outside/data")).unwrap();
    std::os::unix::fs::symlink(site.path("outside/data"), site.path("sites/blog/data")).unwrap();
    site.write(
        "policies/p.toml",
        "tenant = \"a\"\nroot = \"../sites/blog\"\n[capabilities]\nread_dirs = [\"../sites/blog/data\", \"../sites/none\"]\nlib_dirs = [\"../sites/blog/lib\", \"../outside\"]\n",
    );
    let (set, problems) = site.load_all("policies = \"policies\"\nallowed_roots = [\"sites\"]\n");
    assert!(set.tenants.is_empty());
    let allowed = site.shown("sites");
    assert_eq!(
        problems,
        [
            format!(
                "{}:4:14: ../sites/blog/data is outside the allowed roots ({allowed})",
                p(&site)
            ),
            format!("{}:4:36: ../sites/none is not a directory", p(&site)),
            format!(
                "{}:5:34: ../outside is outside the allowed roots ({allowed})",
                p(&site)
            ),
        ]
    );
}

#[test]
fn policy_granted_capabilities_are_kept() {
    let site = Site::new("policy-capabilities");
    site.write("lib/util.lua", "return {}\n");
    site.write(
        "policies/p.toml",
        "tenant = \"a\"\nroot = \"../www\"\n[capabilities]\nshared_dicts = { cache = \"10m\", small = \"512k\" }\noutbound = [\"https://api.example.com\", \"tcp://127.0.0.1:6379\", \"http://*.example.com:8080\"]\nlib_dirs = [\"../lib\"]\nenv = [\"MODE\"]\nlog_level = \"debug\"\n",
    );
    let (set, problems) = site.load_all(PLAIN_SERVER);
    assert_eq!(problems, Vec::<String>::new());
    let capabilities = &set.tenants[0].capabilities;
    assert_eq!(
        capabilities.dict.shared_dicts,
        [
            ("cache".to_string(), 10 << 20),
            ("small".to_string(), 512 << 10)
        ]
    );
    assert_eq!(
        capabilities.tcp.outbound,
        [
            "https://api.example.com",
            "tcp://127.0.0.1:6379",
            "http://*.example.com:8080"
        ]
    );
    assert_eq!(capabilities.files.lib_dirs, [site.path("lib")]);
    assert!(capabilities.files.read_dirs.is_empty());
    assert_eq!(capabilities.files.env, ["MODE"]);
}

// ---------------------------------------------------------------------
// Across tenants
// ---------------------------------------------------------------------

fn tenant(name: &str, hosts: &str) -> String {
    format!("tenant = \"{name}\"\nhosts = [{hosts}]\nroot = \"../www\"\n")
}

/// Load `policies/a.toml` and `policies/b.toml` (in that order) with
/// Registry::load, which must refuse them, and with load_all: the names of
/// the tenants that loaded, and the problems (the same both ways).
#[track_caller]
fn two_tenants(site: &Site, a: &str, b: &str) -> (Vec<String>, Vec<String>) {
    site.write("policies/a.toml", a);
    site.write("policies/b.toml", b);
    let (set, problems) = site.load_all(PLAIN_SERVER);
    let config = site.server(PLAIN_SERVER).unwrap();
    let refused = Registry::load(config, Metrics::new())
        .err()
        .expect("Registry::load refuses any problem")
        .problems;
    assert_eq!(refused, problems);
    let names = set.tenants.iter().map(|t| t.name.clone()).collect();
    (names, problems)
}

#[test]
fn tenants_duplicate_name() {
    let site = Site::new("tenants-duplicate");
    let (loaded, problems) = two_tenants(
        &site,
        &tenant("shop", "\"a.example\""),
        &tenant("shop", "\"b.example\""),
    );
    assert_eq!(loaded, ["shop"]);
    assert_eq!(
        problems,
        [format!(
            "{}:1:10: tenant `shop` is already defined at {}:1:10",
            site.shown("policies/b.toml"),
            site.shown("policies/a.toml")
        )]
    );
}

#[test]
fn tenants_duplicate_name_has_a_place() {
    let site = Site::new("tenants-duplicate-place");
    let (_, problems) = two_tenants(
        &site,
        &tenant("shop", "\"a.example\""),
        &tenant("shop", "\"b.example\""),
    );
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0].starts_with(&format!("{}:1:10: ", site.shown("policies/b.toml"))),
        "{problems:#?}"
    );
}

#[test]
fn tenants_overlapping_exact_hosts() {
    let site = Site::new("tenants-overlap-exact");
    let (loaded, problems) = two_tenants(
        &site,
        &tenant("a", "\"shop.example\""),
        &tenant("b", "\"other.example\", \"Shop.Example\""),
    );
    assert_eq!(loaded, ["a"]);
    assert_eq!(
        problems,
        [format!(
            "{}:2:27: host `shop.example` overlaps `shop.example` of tenant a ({}:2:10)",
            site.shown("policies/b.toml"),
            site.shown("policies/a.toml")
        )]
    );
}

#[test]
fn tenants_overlapping_wildcard_and_exact() {
    let site = Site::new("tenants-overlap-wildcard-exact");
    let (loaded, problems) = two_tenants(
        &site,
        &tenant("a", "\"x.example\", \"*.example.com\""),
        &tenant("b", "\"a.example.com\""),
    );
    assert_eq!(loaded, ["a"]);
    assert_eq!(
        problems,
        [format!(
            "{}:2:10: host `a.example.com` overlaps `*.example.com` of tenant a ({}:2:23)",
            site.shown("policies/b.toml"),
            site.shown("policies/a.toml")
        )]
    );
    // The other way round: the exact name first.
    let (loaded, problems) = two_tenants(
        &site,
        &tenant("a", "\"a.b.example.com\""),
        &tenant("b", "\"*.example.com\""),
    );
    assert_eq!(loaded, ["a"]);
    assert_eq!(
        problems,
        [format!(
            "{}:2:10: host `*.example.com` overlaps `a.b.example.com` of tenant a ({}:2:10)",
            site.shown("policies/b.toml"),
            site.shown("policies/a.toml")
        )]
    );
}

#[test]
fn tenants_overlapping_nested_wildcards() {
    let site = Site::new("tenants-overlap-wildcards");
    let (loaded, problems) = two_tenants(
        &site,
        &tenant("a", "\"*.example.com\""),
        &tenant("b", "\"*.a.example.com\""),
    );
    assert_eq!(loaded, ["a"]);
    assert_eq!(
        problems,
        [format!(
            "{}:2:10: host `*.a.example.com` overlaps `*.example.com` of tenant a ({}:2:10)",
            site.shown("policies/b.toml"),
            site.shown("policies/a.toml")
        )]
    );
}

#[test]
fn tenants_wildcard_and_its_bare_domain_do_not_overlap() {
    let site = Site::new("tenants-no-overlap");
    site.write("policies/a.toml", &tenant("a", "\"*.example.com\""));
    site.write(
        "policies/b.toml",
        &tenant(
            "b",
            "\"example.com\", \"*.badexample.com\", \"*.com.example\"",
        ),
    );
    let registry = site.registry(PLAIN_SERVER);
    let set = registry.current();
    let names: Vec<&str> = set.tenants.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    let for_host = |host: &str| set.for_host(Some(host)).map(|t| t.name.clone());
    assert_eq!(for_host("example.com").as_deref(), Some("b"));
    assert_eq!(for_host("www.example.com").as_deref(), Some("a"));
    assert_eq!(for_host("x.badexample.com").as_deref(), Some("b"));
}

#[test]
fn tenants_every_conflict_is_listed() {
    let site = Site::new("tenants-every-conflict");
    site.write("policies/a.toml", &tenant("a", "\"a.example\""));
    site.write("policies/b.toml", &tenant("b", "\"*.b.example\""));
    site.write(
        "policies/c.toml",
        &tenant("a", "\"a.example\", \"x.b.example\", \"c.example\""),
    );
    let (set, problems) = site.load_all(PLAIN_SERVER);
    let names: Vec<&str> = set.tenants.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    let (a, b, c) = (
        site.shown("policies/a.toml"),
        site.shown("policies/b.toml"),
        site.shown("policies/c.toml"),
    );
    assert_eq!(
        problems,
        [
            format!("{c}:1:10: tenant `a` is already defined at {a}:1:10"),
            format!("{c}:2:10: host `a.example` overlaps `a.example` of tenant a ({a}:2:10)"),
            format!("{c}:2:23: host `x.b.example` overlaps `*.b.example` of tenant b ({b}:2:10)"),
        ]
    );
}

// ---------------------------------------------------------------------
// Every problem of a policy, in order
// ---------------------------------------------------------------------

#[test]
fn a_policy_lists_every_problem_in_source_order() {
    let site = Site::new("policy-every-problem");
    let p = p(&site);
    assert_eq!(
        site.policy_problems(
            "tenant = \"bad name\"\nhosts = [\"ok.example\", \"bad:80\"]\nroot = \"../www\"\n\n[limits]\ntimeout_ms = 0\n"
        ),
        [
            format!("{p}:1:10: tenant name `bad name`: use 1 to 64 letters, digits, '_' and '-'"),
            format!(
                "{p}:2:24: `bad:80` is not a host name (like example.com) or a wildcard (like *.example.com); ports are not part of it"
            ),
            format!("{p}:6:14: timeout_ms must be between 1 and 3600000"),
        ]
    );
    // A missing root does not hide the other problems.
    assert_eq!(
        site.policy_problems(
            "tenant = \"a\"\nroot = \"../gone\"\n[limits]\nfuel = 0\n[capabilities]\nlog_level = \"loud\"\n"
        ),
        [
            format!("{p}:2:8: ../gone is not a directory"),
            format!("{p}:4:8: fuel must be between 1 and 18446744073709551614"),
            format!(
                "{p}:6:13: log_level `loud` is not one of stderr, emerg, alert, crit, error, warn, notice, info, debug"
            ),
        ]
    );
}

#[test]
fn problems_follow_the_file_when_sections_are_reordered() {
    let site = Site::new("policy-source-order");
    let p = p(&site);
    assert_eq!(
        site.policy_problems(
            "tenant = \"a\"\nroot = \"../www\"\n[capabilities]\nlog_level = \"loud\"\n[limits]\nfuel = 0\n"
        ),
        [
            format!(
                "{p}:4:13: log_level `loud` is not one of stderr, emerg, alert, crit, error, warn, notice, info, debug"
            ),
            format!("{p}:6:8: fuel must be between 1 and 18446744073709551614"),
        ]
    );
    // Limits come in the order of the keys' table, not the file's.
    assert_eq!(
        site.policy_problems("tenant = \"a\"\nroot = \"../www\"\n[limits]\nburst = 0\nfuel = 0\n"),
        [
            format!("{p}:4:9: burst must be between 1 and 1000000"),
            format!("{p}:5:8: fuel must be between 1 and 18446744073709551614"),
        ]
    );
    // Shared dicts come in name order.
    assert_eq!(
        site.policy_problems(
            "tenant = \"a\"\nroot = \"../www\"\n[capabilities]\nshared_dicts = { zz = \"0\", aa = \"0\" }\n"
        ),
        [
            format!("{p}:4:23: shared dict `zz`: `0` is not a size between 1 and 1g (like \"10m\")"),
            format!("{p}:4:33: shared dict `aa`: `0` is not a size between 1 and 1g (like \"10m\")"),
        ]
    );
}

// ---------------------------------------------------------------------
// Defaults and ceilings
// ---------------------------------------------------------------------

fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

#[test]
fn defaults_are_capped_by_the_ceilings() {
    let site = Site::new("defaults-capped");
    site.write("policies/p.toml", "tenant = \"a\"\nroot = \"../www\"\n");
    let registry = site.registry(
        "policies = \"policies\"\n[limits]\ntimeout_ms = 1000\nmemory_mib = 16\nmax_concurrency = 1\nmax_request_body_kib = 8\n",
    );
    let set = registry.current();
    let limits = &set.by_name("a").unwrap().limits;
    // Capped: the built-in defaults are 5000 ms, 64 MiB, the cores, 1 MiB.
    assert_eq!(limits.sandbox.timeout, Duration::from_millis(1000));
    assert_eq!(limits.sandbox.memory_bytes, 16 << 20);
    assert_eq!(limits.admission.max_concurrency, 1);
    assert_eq!(limits.max_request_body_bytes, 8 << 10);
    // Not capped: the built-in defaults.
    assert_eq!(limits.sandbox.fuel, 10_000_000_000);
    assert_eq!(limits.sandbox.output_bytes, 4096 << 10);
    assert_eq!(limits.admission.max_queue, 1024);
    assert_eq!(limits.admission.queue_timeout, Duration::from_millis(1000));
}

#[test]
fn built_in_defaults_without_ceilings() {
    let site = Site::new("defaults-built-in");
    site.write("policies/p.toml", "tenant = \"a\"\nroot = \"../www\"\n");
    let registry = site.registry(PLAIN_SERVER);
    let set = registry.current();
    let limits = &set.by_name("a").unwrap().limits;
    assert_eq!(limits.sandbox.fuel, 10_000_000_000);
    assert_eq!(limits.sandbox.timeout, Duration::from_millis(5000));
    assert_eq!(limits.sandbox.memory_bytes, 64 << 20);
    assert_eq!(limits.sandbox.output_bytes, 4096 << 10);
    assert_eq!(limits.max_request_body_bytes, 1024 << 10);
    // All cores but one, at least one.
    assert_eq!(limits.admission.max_concurrency, (cores() - 1).max(1));
    // Three quarters of the server's default places in flight.
    assert_eq!(
        limits.admission.max_in_flight,
        moonwall::EngineSettings::default_max_in_flight() * 3 / 4
    );
    assert_eq!(limits.admission.max_queue, 1024);
    assert_eq!(limits.admission.queue_timeout, Duration::from_millis(1000));
}

#[test]
fn the_default_rate_is_unlimited() {
    let site = Site::new("defaults-rate");
    site.write("policies/p.toml", "tenant = \"a\"\nroot = \"../www\"\n");
    let registry = site.registry(PLAIN_SERVER);
    let set = registry.current();
    let limits = &set.by_name("a").unwrap().limits;
    assert_eq!(limits.admission.requests_per_second, None);
}

#[test]
fn a_policys_own_values_are_taken() {
    let site = Site::new("defaults-own-values");
    site.write(
        "policies/p.toml",
        "tenant = \"a\"\nroot = \"../www\"\n[limits]\nfuel = 500000000\ntimeout_ms = 500\nmemory_mib = 16\nmax_request_body_kib = 64\nmax_response_body_kib = 512\nmax_concurrency = 2\nmax_queue = 16\nqueue_timeout_ms = 250\nrequests_per_second = 200\nburst = 50\n",
    );
    let registry = site.registry(
        "policies = \"policies\"\n[limits]\ntimeout_ms = 1000\nmemory_mib = 32\nrequests_per_second = 1000\n",
    );
    let set = registry.current();
    let limits = &set.by_name("a").unwrap().limits;
    assert_eq!(limits.sandbox.fuel, 500_000_000);
    assert_eq!(limits.sandbox.timeout, Duration::from_millis(500));
    assert_eq!(limits.sandbox.memory_bytes, 16 << 20);
    assert_eq!(limits.sandbox.output_bytes, 512 << 10);
    assert_eq!(limits.max_request_body_bytes, 64 << 10);
    assert_eq!(limits.admission.max_concurrency, 2);
    assert_eq!(limits.admission.max_queue, 16);
    assert_eq!(limits.admission.queue_timeout, Duration::from_millis(250));
    assert_eq!(limits.admission.requests_per_second, Some(200.0));
    assert_eq!(limits.admission.burst, 50);
    // A value equal to the ceiling is allowed.
    site.write(
        "policies/p.toml",
        "tenant = \"a\"\nroot = \"../www\"\n[limits]\ntimeout_ms = 1000\n",
    );
    let registry = site.registry("policies = \"policies\"\n[limits]\ntimeout_ms = 1000\n");
    let set = registry.current();
    assert_eq!(
        set.by_name("a").unwrap().limits.sandbox.timeout,
        Duration::from_millis(1000)
    );
}

#[test]
fn burst_defaults_to_the_rate() {
    let site = Site::new("defaults-burst");
    site.write(
        "policies/p.toml",
        "tenant = \"a\"\nroot = \"../www\"\n[limits]\nrequests_per_second = 200\n",
    );
    let registry = site.registry(PLAIN_SERVER);
    let set = registry.current();
    let admission = &set.by_name("a").unwrap().limits.admission;
    assert_eq!(admission.requests_per_second, Some(200.0));
    assert_eq!(admission.burst, 200);

    // A rate from the ceiling only: the burst follows it too.
    site.write("policies/p.toml", "tenant = \"a\"\nroot = \"../www\"\n");
    let registry = site.registry("policies = \"policies\"\n[limits]\nrequests_per_second = 30\n");
    let set = registry.current();
    let admission = &set.by_name("a").unwrap().limits.admission;
    assert_eq!(admission.requests_per_second, Some(30.0));
    assert_eq!(admission.burst, 30);
}

// ---------------------------------------------------------------------
// Which tenant a host reaches
// ---------------------------------------------------------------------

fn host_site(name: &str) -> Site {
    let site = Site::new(name);
    site.write("policies/exact.toml", &tenant("exact", "\"example.com\""));
    site.write("policies/wild.toml", &tenant("wild", "\"*.example.org\""));
    site.write("policies/fallback.toml", &tenant("fallback", ""));
    site
}

fn tenant_for(set: &TenantSet, host: Option<&str>) -> Option<String> {
    set.for_host(host).map(|t| t.name.clone())
}

#[test]
fn hosts_pick_their_tenant() {
    let site = host_site("hosts-match");
    let registry = site.registry(PLAIN_SERVER);
    let set = registry.current();
    let of = |host: &str| tenant_for(&set, Some(host));
    // Exact.
    assert_eq!(of("example.com").as_deref(), Some("exact"));
    assert_eq!(of("www.example.com"), None);
    // Wildcards, one and two labels deep, but not the bare domain.
    assert_eq!(of("a.example.org").as_deref(), Some("wild"));
    assert_eq!(of("a.b.example.org").as_deref(), Some("wild"));
    assert_eq!(of("example.org"), None);
    assert_eq!(of("badexample.org"), None);
    // Case-insensitive, port stripped, trailing dot removed.
    assert_eq!(of("EXAMPLE.Com").as_deref(), Some("exact"));
    assert_eq!(of("A.Example.ORG").as_deref(), Some("wild"));
    assert_eq!(of("example.com:8080").as_deref(), Some("exact"));
    assert_eq!(of("x.example.org:443").as_deref(), Some("wild"));
    assert_eq!(of("example.com.").as_deref(), Some("exact"));
    assert_eq!(of("Example.COM.:80").as_deref(), Some("exact"));
    assert_eq!(of("x.example.org.").as_deref(), Some("wild"));
    // Unknown or missing: no tenant without a default.
    assert_eq!(of("unknown.net"), None);
    assert_eq!(of("[::1]:8080"), None);
    assert_eq!(of(""), None);
    assert_eq!(tenant_for(&set, None), None);
}

#[test]
fn unknown_hosts_go_to_the_default_tenant() {
    let site = host_site("hosts-default");
    let registry = site.registry("policies = \"policies\"\ndefault_tenant = \"fallback\"\n");
    let set = registry.current();
    let of = |host: Option<&str>| tenant_for(&set, host);
    assert_eq!(of(Some("unknown.net")).as_deref(), Some("fallback"));
    assert_eq!(of(Some("example.org")).as_deref(), Some("fallback"));
    assert_eq!(of(Some("127.0.0.1:8080")).as_deref(), Some("fallback"));
    assert_eq!(of(None).as_deref(), Some("fallback"));
    // Named hosts still go to their tenant.
    assert_eq!(of(Some("example.com")).as_deref(), Some("exact"));
    assert_eq!(of(Some("x.example.org")).as_deref(), Some("wild"));
}

// ---------------------------------------------------------------------
// moonwall check
// ---------------------------------------------------------------------

fn check(config: &Path) -> (i32, String, String) {
    let output: Output = Command::new(env!("CARGO_BIN_EXE_moonwall"))
        .args(["check", "--config"])
        .arg(config)
        .env("MOONWALL_CACHE_DIR", common::cache_dir())
        .output()
        .expect("moonwall runs");
    (
        output.status.code().expect("an exit code"),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_the_example_config() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/moonwall.toml");
    let (code, stdout, stderr) = check(&config);
    assert_eq!((code, stdout.as_str()), (0, ""), "{stderr}");
    let summary = stderr
        .strip_prefix(&format!("{}: OK (3 tenant(s), ", config.display()))
        .and_then(|rest| rest.strip_suffix(" script(s) compiled)\n"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(summary.parse::<usize>().unwrap() > 0, "{stderr}");
}

#[test]
fn check_lists_policy_problems_and_exits_1() {
    let site = Site::new("ck-pol");
    site.write(
        "moonwall.toml",
        "policies = \"policies\"\n[limits]\ntimeout_ms = 1000\n",
    );
    site.write("policies/a.toml", &tenant("a", "\"a.example\""));
    site.write(
        "policies/b.toml",
        "tenant = \"b\"\nhosts = [\"a.example\"]\nroot = \"../www\"\n[limits]\ntimeout_ms = 5000\n",
    );
    let (code, stdout, stderr) = check(&site.config());
    let (a, b, config) = (
        site.shown("policies/a.toml"),
        site.shown("policies/b.toml"),
        site.config().display().to_string(),
    );
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert_eq!(
        stdout,
        format!(
            "{b}:5:14: timeout_ms = 5000 is above the server's ceiling of 1000 ({config}:3:14)\n"
        )
    );
    // The one tenant that loaded still has its script compiled.
    assert_eq!(
        stderr,
        format!("{config}: 1 problem(s) (1 tenant(s), 1 script(s) checked)\n")
    );
    // Fixed, the overlap shows.
    site.write(
        "policies/b.toml",
        "tenant = \"b\"\nhosts = [\"a.example\"]\nroot = \"../www\"\n",
    );
    let (code, stdout, _) = check(&site.config());
    assert_eq!(code, 1);
    assert_eq!(
        stdout,
        format!("{b}:2:10: host `a.example` overlaps `a.example` of tenant a ({a}:2:10)\n")
    );
}

#[test]
fn check_compiles_every_script_under_a_root() {
    let site = Site::new("ck-root");
    site.write("moonwall.toml", PLAIN_SERVER);
    site.write("policies/a.toml", &tenant("a", "\"a.example\""));
    site.write("www/ok.lua", "ngx.say('ok')\n");
    site.write("www/b.lua", "local t = {\nend\n");
    site.write("www/d/c.lua", "ngx.say('x'\n\nngx.say('y')\n");
    // Dot-names are never served, so never compiled.
    site.write("www/.hidden.lua", "this is not lua\n");
    let (code, stdout, stderr) = check(&site.config());
    assert_eq!(code, 1, "{stdout}{stderr}");
    let mut lines: Vec<&str> = stdout.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            format!(
                "{}:2: unexpected symbol near 'end'",
                site.shown("www/b.lua")
            ),
            format!(
                "{}:3: ')' expected (to close '(' at line 1) near 'ngx'",
                site.shown("www/d/c.lua")
            ),
        ]
    );
    assert_eq!(
        stderr,
        format!(
            "{}: 2 problem(s) (1 tenant(s), 4 script(s) checked)\n",
            site.config().display()
        )
    );
}

#[test]
fn check_compiles_the_modules_of_lib_dirs() {
    let site = Site::new("ck-lib");
    site.write("moonwall.toml", PLAIN_SERVER);
    site.write(
        "policies/a.toml",
        &format!(
            "{}\n[capabilities]\nlib_dirs = [\"../lib\"]\n",
            tenant("a", "\"a.example\"")
        ),
    );
    site.write("www/ok.lua", "ngx.say(require('util').x)\n");
    site.write("lib/util.lua", "return { x = 1 }\n");
    site.write("lib/deep/broken.lua", "return {\n");
    let (code, stdout, stderr) = check(&site.config());
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert_eq!(
        stdout,
        format!(
            "{}:2: unexpected symbol near <eof>\n",
            site.shown("lib/deep/broken.lua")
        )
    );
    assert!(stderr.contains("1 problem(s)"), "{stderr}");
}

#[test]
fn check_compiles_location_scripts() {
    let site = Site::new("ck-loc");
    site.write("moonwall.toml", PLAIN_SERVER);
    site.write("phases/auth.lua", "if ngx.var.x then\n  return\n");
    site.write(
        "policies/a.toml",
        "tenant = \"a\"\nhosts = [\"a.example\"]\nroot = \"../www\"\n[[location]]\npath = \"/api/\"\naccess = \"../phases/auth.lua\"\ncontent = \"index.lua\"\n",
    );
    // And a policy problem in another tenant: every problem is listed.
    site.write(
        "policies/b.toml",
        "tenant = \"b\"\nhosts = [\"b.example\"]\nroot = \"../www\"\n[capabilities]\nenv = [\"A-B\"]\n",
    );
    let (code, stdout, stderr) = check(&site.config());
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert_eq!(
        stdout,
        format!(
            "{}:5:8: `A-B` is not an environment variable name\n{}:3: 'end' expected (to close 'if' at line 1) near <eof>\n",
            site.shown("policies/b.toml"),
            site.shown("www/../phases/auth.lua"),
        )
    );
    assert_eq!(
        stderr,
        format!(
            "{}: 2 problem(s) (1 tenant(s), 2 script(s) checked)\n",
            site.config().display()
        )
    );
}

#[test]
fn check_names_scripts_with_long_paths() {
    let site = Site::new("check-long-path");
    site.write("moonwall.toml", PLAIN_SERVER);
    site.write("policies/a.toml", &tenant("a", "\"a.example\""));
    let deep = "www/a-rather-long-directory-name/and-another-one-below-it/broken.lua";
    site.write(deep, "local t = {\nend\n");
    let (code, stdout, _) = check(&site.config());
    assert_eq!(code, 1);
    assert_eq!(
        stdout,
        format!("{}:2: unexpected symbol near 'end'\n", site.shown(deep))
    );
}

#[test]
fn check_names_files_as_the_config_is_named() {
    // Run from the config's directory with a relative path, as operators do:
    // the policy files are named relative to it.
    let site = Site::new("ck-rel");
    site.write(
        "moonwall.toml",
        "policies = \"policies\"\n[limits]\ntimeout_ms = 1000\n",
    );
    site.write(
        "policies/a.toml",
        "tenant = \"a\"\nroot = \"../www\"\n[limits]\ntimeout_ms = 5000\n",
    );
    let output = Command::new(env!("CARGO_BIN_EXE_moonwall"))
        .args(["check", "--config", "moonwall.toml"])
        .current_dir(&site.dir)
        .env("MOONWALL_CACHE_DIR", common::cache_dir())
        .output()
        .expect("moonwall runs");
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "policies/a.toml:4:14: timeout_ms = 5000 is above the server's ceiling of 1000 (moonwall.toml:3:14)\n"
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "moonwall.toml: 1 problem(s) (0 script(s) checked)\n"
    );
}

#[test]
fn check_on_a_missing_config_exits_2() {
    let missing =
        std::env::temp_dir().join(format!("mwp{}-no-such/moonwall.toml", std::process::id()));
    let (code, stdout, stderr) = check(&missing);
    assert_eq!(code, 2);
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        format!(
            "error: cannot read {}: No such file or directory (os error 2)\n",
            missing.display()
        )
    );
}

#[test]
fn check_on_a_bad_server_config_exits_1() {
    let site = Site::new("ck-srv");
    site.write(
        "moonwall.toml",
        "policies = \"policies\"\nlisten = \"nowhere\"\n",
    );
    let (code, stdout, stderr) = check(&site.config());
    assert_eq!(code, 1);
    assert_eq!(
        stdout,
        format!(
            "{}:2:10: `nowhere` is not an address like 127.0.0.1:8080\n",
            site.config().display()
        )
    );
    assert_eq!(
        stderr,
        format!(
            "{}: 1 problem(s) (0 script(s) checked)\n",
            site.config().display()
        )
    );
}
