//! A site served in-process for the capability tests: one tenant, `t`, on
//! every host, with the `[capabilities]` and `[limits]` a test gives and its
//! scripts in `root/`, behind a real server on an ephemeral port.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use moonwall::http::scripts::SandboxCompiler;
use moonwall::http::server::{App, Server, ServerSettings, ServerThread};
use moonwall::tenants::metrics::Metrics;
use moonwall::tenants::{Registry, ServerConfig};
use moonwall::{EngineSettings, Sandbox};

/// One sandbox per test binary; every request still gets a fresh instance.
pub fn shared_sandbox() -> Arc<Sandbox> {
    static SANDBOX: OnceLock<Arc<Sandbox>> = OnceLock::new();
    SANDBOX
        .get_or_init(|| {
            Arc::new(
                Sandbox::new(EngineSettings {
                    // Room for the tests that keep 100 requests in flight.
                    max_instances: 160,
                    max_memory_bytes: 128 << 20,
                    cache_dir: Some(super::cache_dir()),
                    ..EngineSettings::default()
                })
                .expect("the sandbox starts"),
            )
        })
        .clone()
}

/// The server log of this test binary (the tests share it: look for what
/// is unique to a test).
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        LOG.lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Send this test binary's tracing output to [`logged`].
pub fn capture_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_writer(|| LogWriter)
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .try_init();
    });
}

/// Everything the in-process servers logged so far.
pub fn logged() -> String {
    String::from_utf8_lossy(&LOG.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
}

/// A server of one tenant `t` (policy `policies/t.toml`), in this process.
pub struct Site {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub registry: Arc<Registry>,
    /// Stopped gracefully when the site is dropped.
    server: ServerThread,
}

impl Site {
    /// Lay out `target/tmp/sites/NAME/`: `moonwall.toml` (with `server_top`
    /// among its top-level keys), `policies/t.toml` with the given
    /// `[limits]` and `[capabilities]` lines, and `files` (paths relative to
    /// the site directory; scripts go in `root/`). Then serve it.
    pub fn start(
        name: &str,
        server_top: &str,
        limits: &str,
        capabilities: &str,
        files: &[(&str, &str)],
    ) -> Site {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("sites")
            .join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("policies")).unwrap();
        std::fs::create_dir_all(dir.join("root")).unwrap();
        std::fs::write(
            dir.join("moonwall.toml"),
            format!(
                "listen = \"127.0.0.1:0\"\npolicies = \"policies\"\ndefault_tenant = \"t\"\n{server_top}\n\n[limits]\nmemory_mib = 128\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("policies/t.toml"),
            format!(
                "tenant = \"t\"\nhosts = [\"localhost\"]\nroot = \"../root\"\n\n[limits]\n{limits}\n\n[capabilities]\n{capabilities}\n"
            ),
        )
        .unwrap();
        for (path, contents) in files {
            let path = dir.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, contents).unwrap();
        }
        Site::serve(dir)
    }

    /// Serve the site laid out in `dir` (its `moonwall.toml`).
    pub fn serve(dir: PathBuf) -> Site {
        capture_logs();
        let mut config =
            ServerConfig::load(&dir.join("moonwall.toml")).unwrap_or_else(|e| panic!("{e}"));
        // As `moonwall serve` does: lib-dir modules compiled by the sandbox.
        config.caps.module_compiler = Some(SandboxCompiler::shared(shared_sandbox()));
        let registry =
            Arc::new(Registry::load(config, Metrics::new()).unwrap_or_else(|e| panic!("{e}")));
        let app = App::with_registry(
            shared_sandbox(),
            registry.clone(),
            ServerSettings {
                max_running: 32,
                shutdown_grace: Duration::from_secs(2),
                ..ServerSettings::default()
            },
        );
        let server = Server::spawn(app, &[([127, 0, 0, 1], 0).into()], None, 2).unwrap();
        Site {
            addr: server.addr(),
            dir,
            registry,
            server,
        }
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.join(relative)
    }

    pub fn get(&self, path: &str) -> Reply {
        send(
            self.addr,
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
    }

    /// A request with extra header lines (`Name: value`).
    pub fn get_with(&self, path: &str, headers: &[&str]) -> Reply {
        let mut head = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
        for header in headers {
            head.push_str(header);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        send(self.addr, head.as_bytes())
    }

    pub fn post(&self, path: &str, body: &[u8]) -> Reply {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        send(self.addr, &request)
    }

    /// Send one GET of `path` from each of `clients` threads at once.
    pub fn all_at_once(&self, path: &str, clients: usize) -> Vec<Reply> {
        let start = std::sync::Arc::new(std::sync::Barrier::new(clients));
        let addr = self.addr;
        let threads: Vec<_> = (0..clients)
            .map(|_| {
                let start = start.clone();
                let request =
                    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
                std::thread::spawn(move || {
                    start.wait();
                    send(addr, request.as_bytes())
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    }

    /// Rewrite a file of the site (a script, the policy) and reload.
    pub fn write(&self, relative: &str, contents: &str) {
        let path = self.dir.join(relative);
        std::fs::create_dir_all(path.parent().unwrap_or(Path::new("."))).unwrap();
        std::fs::write(path, contents).unwrap();
    }
}

#[derive(Debug, Clone)]
pub struct Reply {
    /// 0 if no response came.
    pub status: u16,
    pub head: String,
    pub body: String,
    /// The body ended cleanly (its last chunk, or all of its Content-Length).
    pub complete: bool,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then_some(value.trim())
        })
    }

    /// A complete 200 with this body.
    pub fn is_ok_with(&self, body: &str) -> bool {
        self.status == 200 && self.complete && self.body == body
    }
}

/// Send `request` on a new connection and read until the server closes it.
pub fn send(addr: SocketAddr, request: &[u8]) -> Reply {
    let mut bytes = Vec::new();
    let sent = TcpStream::connect(addr).and_then(|mut stream| {
        stream.set_read_timeout(Some(Duration::from_secs(15)))?;
        stream.write_all(request)?;
        // A cut response may end in a reset: keep what came before it.
        let _ = stream.read_to_end(&mut bytes);
        Ok(())
    });
    match sent {
        Ok(()) => parse(&bytes),
        Err(error) => Reply {
            status: 0,
            head: String::new(),
            body: format!("connection failed: {error}"),
            complete: false,
        },
    }
}

fn parse(bytes: &[u8]) -> Reply {
    let split = bytes.windows(4).position(|w| w == b"\r\n\r\n");
    let Some(split) = split else {
        return Reply {
            status: 0,
            head: String::from_utf8_lossy(bytes).into_owned(),
            body: String::new(),
            complete: false,
        };
    };
    let head = String::from_utf8_lossy(&bytes[..split]).into_owned();
    let raw_body = &bytes[split + 4..];
    let status = head
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let mut reply = Reply {
        status,
        head,
        body: String::new(),
        complete: false,
    };
    let chunked = reply
        .header("transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"));
    if chunked {
        let mut rest = raw_body;
        let mut body = Vec::new();
        while let Some(end) = rest.windows(2).position(|w| w == b"\r\n") {
            let Ok(size) = usize::from_str_radix(String::from_utf8_lossy(&rest[..end]).trim(), 16)
            else {
                break;
            };
            if size == 0 {
                reply.complete = true;
                break;
            }
            let data = &rest[end + 2..];
            if data.len() < size + 2 {
                body.extend_from_slice(&data[..data.len().min(size)]);
                break;
            }
            body.extend_from_slice(&data[..size]);
            rest = &data[size + 2..];
        }
        reply.body = String::from_utf8_lossy(&body).into_owned();
    } else {
        let length = reply
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok());
        reply.complete = length.is_none_or(|length| raw_body.len() == length);
        reply.body = String::from_utf8_lossy(raw_body).into_owned();
    }
    reply
}

/// Each reply's body is `START END` (seconds): every request started before
/// any of them ended, so they all waited at the same time.
pub fn assert_all_overlapped(replies: &[Reply]) {
    let spans: Vec<(f64, f64)> = replies
        .iter()
        .map(|reply| {
            assert_eq!(reply.status, 200, "{reply:?} {}", logged());
            let mut times = reply
                .body
                .split_whitespace()
                .map(|t| t.parse::<f64>().unwrap());
            (times.next().unwrap(), times.next().unwrap())
        })
        .collect();
    let last_start = spans.iter().map(|s| s.0).fold(f64::MIN, f64::max);
    let first_end = spans.iter().map(|s| s.1).fold(f64::MAX, f64::min);
    assert!(
        last_start < first_end,
        "the waits did not overlap: the last request started at {last_start}, the first ended at {first_end}"
    );
}
