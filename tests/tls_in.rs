//! HTTPS listeners: certificates from the server config and from tenants'
//! policies, chosen by the name the client asks for (SNI), checked with
//! curl as a real client, against a CA made for the test.

use crate::common;

use common::site::{capture_logs, shared_sandbox as sandbox};
use common::tls::TestCa;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use moonwall::http::server::{App, Server, ServerSettings, ServerThread};
use moonwall::tenants::metrics::Metrics;
use moonwall::tenants::{Registry, ServerConfig};

/// What every tenant's index answers: who it is and what its connection is.
const WHO: &str = r#"
ngx.say(TENANT, " ", ngx.var.scheme, " https=", ngx.var.https,
  " sni=", tostring(ngx.var.ssl_server_name), " ", tostring(ngx.var.ssl_protocol))
"#;

/// A test directory with a CA, tenants `a` (hosts a.test, *.a.test) and `b`
/// (b.test), each with its certificate unless `a_claims` names others for
/// `a`, and the server config `top` (listen addresses, [tls]).
fn layout(name: &str, a_names: &[&str]) -> (PathBuf, TestCa) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("tls_in")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    let ca = TestCa::new("moonwall test CA");
    ca.write(&dir.join("ca.pem"));
    ca.leaf(a_names).write(&dir.join("certs"), "a");
    ca.leaf(&["b.test"]).write(&dir.join("certs"), "b");
    ca.leaf(&["default.test"])
        .write(&dir.join("certs"), "default");
    std::fs::write(
        dir.join("moonwall.toml"),
        "listen = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\npolicies = \"policies\"\n",
    )
    .unwrap();
    for (tenant, hosts) in [("a", "\"a.test\", \"*.a.test\""), ("b", "\"b.test\"")] {
        std::fs::create_dir_all(dir.join("roots").join(tenant)).unwrap();
        std::fs::write(
            dir.join("roots").join(tenant).join("index.lua"),
            format!("local TENANT = {tenant:?}\n{WHO}"),
        )
        .unwrap();
        std::fs::write(
            dir.join("policies").join(format!("{tenant}.toml")),
            format!(
                "tenant = \"{tenant}\"\nhosts = [{hosts}]\nroot = \"../roots/{tenant}\"\n\n[tls]\ncertificate = \"../certs/{tenant}.pem\"\nkey = \"../certs/{tenant}.key\"\n"
            ),
        )
        .unwrap();
    }
    (dir, ca)
}

/// The server of `dir`'s config in this process: its plain and its HTTPS
/// address.
fn start(dir: &Path, default_certificate: bool) -> (ServerThread, SocketAddr, SocketAddr) {
    let (server, plain, tls, _) = start_with_registry(dir, default_certificate);
    (server, plain, tls)
}

fn start_with_registry(
    dir: &Path,
    default_certificate: bool,
) -> (ServerThread, SocketAddr, SocketAddr, Arc<Registry>) {
    capture_logs();
    let config = ServerConfig::load(&dir.join("moonwall.toml")).unwrap_or_else(|e| panic!("{e}"));
    let tls_listen = config.tls_listen.clone();
    assert_eq!(tls_listen.len(), 1, "the config has one tls_listen");
    let tls_default = default_certificate.then(|| {
        moonwall::site::tls::Certificate::load(
            &dir.join("certs/default.pem"),
            &dir.join("certs/default.key"),
        )
        .unwrap()
    });
    let registry =
        Arc::new(Registry::load(config, Metrics::new()).unwrap_or_else(|e| panic!("{e}")));
    let app = App::with_registry(
        sandbox(),
        registry.clone(),
        ServerSettings {
            max_running: 8,
            shutdown_grace: Duration::from_secs(2),
            tls_listen,
            tls_default,
            ..ServerSettings::default()
        },
    );
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let server = Server::spawn(app, &[loopback], None, 2).unwrap();
    let (plain, tls) = (server.addr(), server.tls_addrs[0]);
    (server, plain, tls, registry)
}

/// curl's answer for `https://HOST:PORT/` (HOST resolved to the listener),
/// trusting the test's CA: (curl's exit code, body, HTTP version).
fn curl_https(dir: &Path, host: &str, tls: SocketAddr, extra: &[&str]) -> (i32, String, String) {
    let port = tls.port();
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "30", "--cacert"])
        .arg(dir.join("ca.pem"))
        .arg("--resolve")
        .arg(format!("{host}:{port}:127.0.0.1"))
        .args(["-w", "\n%{http_version}"])
        .args(extra)
        .arg(format!("https://{host}:{port}/"))
        .output()
        .expect("curl runs");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let (body, version) = stdout.rsplit_once('\n').unwrap_or((&stdout, ""));
    let code = output.status.code().unwrap_or(-1);
    if code != 0 {
        eprintln!("curl {host}: {}", String::from_utf8_lossy(&output.stderr));
    }
    (code, body.trim_end().to_string(), version.to_string())
}

#[test]
fn each_tenant_serves_https_with_its_own_certificate_chosen_by_sni() {
    let (dir, _ca) = layout("by_sni", &["a.test", "*.a.test"]);
    let (_server, plain, tls) = start(&dir, false);

    let (code, body, version) = curl_https(&dir, "a.test", tls, &[]);
    assert_eq!(code, 0);
    assert_eq!(body, "a https https=on sni=a.test TLSv1.3");
    assert_eq!(version, "2", "ALPN offers h2, and curl takes it");

    let (code, body, _) = curl_https(&dir, "www.a.test", tls, &[]);
    assert_eq!(
        (code, body.as_str()),
        (0, "a https https=on sni=www.a.test TLSv1.3")
    );

    // HTTP/1.1 over TLS, and TLS 1.2.
    let (code, body, version) = curl_https(&dir, "b.test", tls, &["--http1.1", "--tls-max", "1.2"]);
    assert_eq!(code, 0);
    assert_eq!(body, "b https https=on sni=b.test TLSv1.2");
    assert_eq!(version, "1.1");

    // A name no tenant has, with no default certificate: no handshake
    // (curl's 35: SSL connect error).
    let (code, _, _) = curl_https(&dir, "c.test", tls, &[]);
    assert_eq!(code, 35);

    // The plain listener is unchanged: http, no TLS variables.
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-H", "Host: a.test"])
        .arg(format!("http://{plain}/"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim_end(),
        "a http https= sni=nil nil"
    );
}

#[test]
fn a_name_without_a_tenants_certificate_gets_the_default_one() {
    let (dir, _ca) = layout("default", &["a.test"]);
    let (_server, _plain, tls) = start(&dir, true);
    // www.a.test is tenant a's host, but a's certificate names only a.test:
    // the default certificate is served, for which curl refuses the name
    // (60: the peer's certificate does not fit).
    let (code, _, _) = curl_https(&dir, "www.a.test", tls, &[]);
    assert_eq!(code, 60);
    // The default certificate's own name gets it, and the default tenant
    // (none here) decides what answers: 404, over HTTPS.
    let port = tls.port();
    let output = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "30",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
        ])
        .arg(dir.join("ca.pem"))
        .arg("--resolve")
        .arg(format!("default.test:{port}:127.0.0.1"))
        .arg(format!("https://default.test:{port}/"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "404");
    let (code, body, _) = curl_https(&dir, "a.test", tls, &[]);
    assert_eq!(
        (code, body.as_str()),
        (0, "a https https=on sni=a.test TLSv1.3")
    );
}

#[test]
fn a_renewed_certificate_serves_after_a_reload() {
    let (dir, ca) = layout("renewed", &["a.test"]);
    let (_server, _plain, tls, registry) = start_with_registry(&dir, false);
    // a's certificate does not name www.a.test yet: no certificate fits.
    assert_eq!(curl_https(&dir, "www.a.test", tls, &[]).0, 35);
    ca.leaf(&["a.test", "www.a.test"])
        .write(&dir.join("certs"), "a");
    assert!(registry.changed(), "a changed certificate is noticed");
    let report = registry.reload();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let (code, body, _) = curl_https(&dir, "www.a.test", tls, &[]);
    assert_eq!(
        (code, body.as_str()),
        (0, "a https https=on sni=www.a.test TLSv1.3")
    );
}

#[test]
fn a_tenant_cannot_claim_a_certificate_for_another_tenants_host() {
    let (dir, _ca) = layout("claim", &["a.test", "b.test"]);
    let config = ServerConfig::load(&dir.join("moonwall.toml")).unwrap();
    let error = Registry::load(config, Metrics::new())
        .err()
        .expect("the policy is refused")
        .to_string();
    let policy = dir.join("policies/a.toml");
    assert!(
        error.contains(&format!(
            "{}:6:15: [tls] the certificate names `b.test`, not among this tenant's hosts",
            policy.display()
        )),
        "{error}"
    );
}

#[test]
fn a_tenants_certificate_outside_the_allowed_roots_is_refused() {
    let (dir, _ca) = layout("outside", &["a.test"]);
    let outside = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tls_in_outside");
    let _ = std::fs::remove_dir_all(&outside);
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::copy(dir.join("certs/a.pem"), outside.join("a.pem")).unwrap();
    std::fs::write(
        dir.join("moonwall.toml"),
        "listen = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\npolicies = \"policies\"\nallowed_roots = [\"roots\", \"certs\"]\n",
    )
    .unwrap();
    let policy = dir.join("policies/a.toml");
    let text = std::fs::read_to_string(&policy).unwrap().replace(
        "../certs/a.pem",
        &outside.join("a.pem").display().to_string(),
    );
    std::fs::write(&policy, text).unwrap();
    let config = ServerConfig::load(&dir.join("moonwall.toml")).unwrap();
    let error = Registry::load(config, Metrics::new())
        .err()
        .expect("the policy is refused")
        .to_string();
    assert!(
        error.contains(&format!("{}:6:15: [tls] ", policy.display()))
            && error.contains("is outside the allowed roots"),
        "{error}"
    );
}

/// `moonwall serve --root` with the TLS flags, as a user starts it: HTTPS
/// with the given certificate, and the flags' mistakes are usage errors.
#[test]
fn serve_root_over_https_with_the_tls_flags() {
    use std::io::{BufRead, BufReader};
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("tls_in")
        .join("serve_root");
    let _ = std::fs::remove_dir_all(&dir);
    let ca = TestCa::new("moonwall test CA");
    ca.write(&dir.join("ca.pem"));
    let (certificate, key) = ca
        .leaf(&["localhost", "127.0.0.1"])
        .write(&dir.join("certs"), "site");
    let (_, other_key) = ca.leaf(&["localhost"]).write(&dir.join("certs"), "other");
    std::fs::create_dir_all(dir.join("www")).unwrap();
    std::fs::write(
        dir.join("www/index.lua"),
        "ngx.say(ngx.var.scheme, ' ', ngx.var.ssl_protocol)",
    )
    .unwrap();
    let serve = |key: &Path, extra: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_moonwall"));
        command
            .args(["serve", "--root"])
            .arg(dir.join("www"))
            .args(["--listen", "127.0.0.1:0", "--tls-listen", "127.0.0.1:0"])
            .arg("--tls-cert")
            .arg(&certificate)
            .arg("--tls-key")
            .arg(key)
            .args(extra)
            .env("MOONWALL_CACHE_DIR", common::cache_dir())
            .stderr(std::process::Stdio::piped());
        command
    };

    // A key that is not the certificate's: refused before serving.
    let output = serve(&other_key, &[]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--tls-cert/--tls-key") && stderr.contains("other.key"),
        "{stderr}"
    );
    // HTTPS without a certificate: a usage error.
    let output = Command::new(env!("CARGO_BIN_EXE_moonwall"))
        .args(["serve", "--root"])
        .arg(dir.join("www"))
        .args(["--tls-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("HTTPS needs a certificate"), "{stderr}");

    let mut child = serve(&key, &[]).spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let mut address = None;
    for _ in 0..20 {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            break;
        }
        seen.push_str(&line);
        if let Some(rest) = line.split("https://").nth(1) {
            address = Some(rest.trim().to_string());
            break;
        }
    }
    let address = address.unwrap_or_else(|| panic!("no https listening line in {seen}"));
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "30", "--cacert"])
        .arg(dir.join("ca.pem"))
        .arg(format!("https://{address}/"))
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim_end(),
        "https TLSv1.3",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A client that connects to an HTTPS listener and never completes its
/// handshake (nothing, or half a ClientHello) is closed at the header
/// timeout, as a plain connection that sends no head.
#[test]
fn a_client_that_never_finishes_its_handshake_is_closed_at_the_header_timeout() {
    use std::io::{Read, Write};
    let (dir, _ca) = layout("slow_handshake", &["a.test"]);
    capture_logs();
    let config = ServerConfig::load(&dir.join("moonwall.toml")).unwrap();
    let tls_listen = config.tls_listen.clone();
    let registry = Arc::new(Registry::load(config, Metrics::new()).unwrap());
    let app = App::with_registry(
        sandbox(),
        registry,
        ServerSettings {
            header_read_timeout: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(2),
            tls_listen,
            ..ServerSettings::default()
        },
    );
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let server = Server::spawn(app, &[loopback], None, 2).unwrap();
    let tls = server.tls_addrs[0];
    for first_bytes in [&b""[..], &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01][..]] {
        let mut stream = std::net::TcpStream::connect(tls).unwrap();
        stream.write_all(first_bytes).unwrap();
        // Far longer than the header timeout: a server that waited for
        // ever would leave this read to time out instead.
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut buffer = [0u8; 64];
        match stream.read(&mut buffer) {
            Ok(n) => assert!(n == 0 || buffer[0] == 0x15, "closed, or an alert"),
            Err(error) => assert!(
                error.kind() != std::io::ErrorKind::WouldBlock
                    && error.kind() != std::io::ErrorKind::TimedOut,
                "the server still held the connection: {error}"
            ),
        }
    }
}
