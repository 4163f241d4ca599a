//! examples/gateway, served as its README says, in front of a real upstream
//! on loopback (its port put in place of the example's 9801).

use crate::common;

use common::site::{Site, logged, send};

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// An upstream that answers every request with what it was asked and the
/// headers it got, with `Server: secret-server/1.0`; the requests it saw.
fn upstream() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let seen = seen2.clone();
            std::thread::spawn(move || {
                // One request per connection is enough here: read its head.
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                seen.lock().unwrap().push(head.clone());
                let first = head.lines().next().unwrap_or("").to_string();
                let body = format!("upstream: {first}\n");
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nServer: secret-server/1.0\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    (addr, seen)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn the_example_gateway_checks_keys_proxies_and_hides_the_upstream() {
    let (addr, seen) = upstream();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/gateway");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("example_gateway");
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(&example, &dir);
    let config = std::fs::read_to_string(dir.join("moonwall.toml"))
        .unwrap()
        .replace("127.0.0.1:9801", &addr)
        .replace("127.0.0.1:8090", "127.0.0.1:0");
    std::fs::write(dir.join("moonwall.toml"), config).unwrap();
    let site = Site::serve(dir);

    let get = |headers: &str| {
        send(
            site.addr,
            format!("GET /docs/a.txt?q=1 HTTP/1.1\r\nHost: localhost\r\n{headers}Connection: close\r\n\r\n")
                .as_bytes(),
        )
    };
    let refused = get("");
    assert_eq!(refused.status, 401, "{refused:?}");
    assert!(refused.body.contains("missing or unknown X-Api-Key"));
    assert!(
        seen.lock().unwrap().is_empty(),
        "the upstream saw a refused request"
    );

    let reply = get("X-Api-Key: k-alice-0123456789\r\n");
    assert_eq!(reply.status, 200, "{reply:?} {}", logged());
    assert_eq!(reply.body, "upstream: GET /docs/a.txt?q=1 HTTP/1.1\n");
    assert_eq!(reply.header("x-user"), Some("alice"));
    assert!(
        reply
            .header("x-request-id")
            .is_some_and(|id| id.len() == 16)
    );
    assert_ne!(reply.header("server"), Some("secret-server/1.0"));
    let head = seen.lock().unwrap()[0].to_ascii_lowercase();
    assert!(head.contains("x-user: alice"), "{head}");
    assert!(!head.contains("x-api-key"), "{head}");
    assert!(head.contains("x-forwarded-for: 127.0.0.1"), "{head}");
    assert!(
        logged().contains(&format!("user=alice upstream={addr} status=200")),
        "{}",
        logged()
    );
}
