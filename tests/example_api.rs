//! The example API of examples/api, end to end: authentication in the access
//! phase (keys read with io.lines from a granted directory, helpers loaded
//! with require from a lib directory), rate limiting with a shared dict, an
//! upstream called through resty.http, JSON in and out. The upstream is a
//! real HTTP server on loopback, run by the test.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;

use common::site::Site;

/// A small upstream: `GET /items/N` answers the item as JSON (404 for N >
/// 100), one request per connection.
fn start_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    return;
                }
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let path = request_line.split(' ').nth(1).unwrap_or("/");
                let id: Option<u32> = path.strip_prefix("/items/").and_then(|n| n.parse().ok());
                let (status, body) = match id {
                    Some(id) if id <= 100 => (
                        "200 OK",
                        format!(
                            r#"{{"id":{id},"name":"item {id}","tags":["a","b"],"price":12.5}}"#
                        ),
                    ),
                    _ => ("404 Not Found", r#"{"error":"not found"}"#.to_string()),
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    addr
}

/// Copy examples/api into a test directory, pointing it at `upstream`.
fn example_copy(name: &str, upstream: SocketAddr) -> std::path::PathBuf {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/api");
    let to = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("example_api")
        .join(name);
    let _ = std::fs::remove_dir_all(&to);
    copy_dir(&from, &to, &upstream.port().to_string());
    to
}

fn copy_dir(from: &Path, to: &Path, port: &str) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target, port);
        } else {
            let text = std::fs::read_to_string(entry.path()).unwrap();
            std::fs::write(target, text.replace("9701", port)).unwrap();
        }
    }
}

#[test]
fn the_example_api_authenticates_rate_limits_calls_upstream_and_answers_json() {
    let upstream = start_upstream();
    let site = Site::serve(example_copy("up", upstream));

    let reply = site.get("/v1/items/7");
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(reply.body, "{\"error\":\"missing bearer key\"}\n");

    let reply = site.get_with("/v1/items/7", &["Authorization: Bearer nope"]);
    assert_eq!(reply.status, 403, "{reply:?}");

    let alice = "Authorization: Bearer k-alice-0123456789";
    let reply = site.get_with("/v1/items/7", &[alice]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("content-type"), Some("application/json"));
    for part in [
        r#""caller":"alice""#,
        r#""id":7"#,
        r#""name":"item 7""#,
        r#""tags":["a","b"]"#,
        r#""served_by":"moonwall""#,
    ] {
        assert!(reply.body.contains(part), "{part} in {}", reply.body);
    }

    let bob = "Authorization: Bearer k-bob-9876543210";
    let reply = site.get_with("/v1/items/999", &[bob]);
    assert_eq!(reply.status, 404, "{reply:?}");
    assert!(
        reply.body.contains(r#""error":"no such item""#),
        "{reply:?}"
    );

    // Five requests a second per key: a burst of twelve meets the limit.
    let statuses: Vec<u16> = (0..12)
        .map(|_| site.get_with("/v1/items/1", &[bob]).status)
        .collect();
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    let limited = site.get_with("/v1/items/1", &[bob]);
    if limited.status == 429 {
        assert_eq!(limited.header("retry-after"), Some("1"));
        assert!(limited.body.contains("rate limit exceeded"));
    }
    // Alice has her own counter.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(site.get_with("/v1/items/2", &[alice]).status, 200);
}

#[test]
fn the_example_api_answers_502_when_the_upstream_is_down() {
    // A port with nothing listening: bind one, then close it.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let site = Site::serve(example_copy("down", port));
    let reply = site.get_with("/v1/items/7", &["Authorization: Bearer k-alice-0123456789"]);
    assert_eq!(reply.status, 502, "{reply:?}");
    assert_eq!(reply.body, "{\"error\":\"upstream unavailable\"}\n");
}
