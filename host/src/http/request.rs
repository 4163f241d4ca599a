//! The incoming request, as the guest will see it (`http-types.request`).

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::bindings::moonwall::sandbox::http_types::{Header, Request};

/// Why a request path cannot be served (answered with 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadPath {
    #[error("the path does not start with '/'")]
    NotAbsolute,
    #[error("invalid percent-escape in the path")]
    BadEscape,
    #[error("NUL byte in the path")]
    Nul,
    #[error("the path climbs above the root")]
    AboveRoot,
}

/// nginx's `$uri`: percent-decode the path, resolve `.` and `..`, merge
/// repeated slashes. A `..` above the root, a NUL byte or a malformed escape
/// is refused rather than guessed at.
pub fn normalize_path(raw: &str) -> Result<Vec<u8>, BadPath> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(BadPath::NotAbsolute);
    }
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(BadPath::BadEscape)?;
            let text = std::str::from_utf8(hex).map_err(|_| BadPath::BadEscape)?;
            let value = u8::from_str_radix(text, 16).map_err(|_| BadPath::BadEscape)?;
            decoded.push(value);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    if decoded.contains(&0) {
        return Err(BadPath::Nul);
    }
    let trailing_slash = decoded.ends_with(b"/");
    let mut segments: Vec<&[u8]> = Vec::new();
    for segment in decoded.split(|&b| b == b'/') {
        match segment {
            b"" | b"." => {}
            b".." => {
                segments.pop().ok_or(BadPath::AboveRoot)?;
            }
            other => segments.push(other),
        }
    }
    let mut path = Vec::with_capacity(decoded.len());
    for segment in &segments {
        path.push(b'/');
        path.extend_from_slice(segment);
    }
    if path.is_empty() || (trailing_slash && !segments.is_empty()) {
        path.push(b'/');
    }
    Ok(path)
}

/// Everything about a request except its body, taken from hyper's view of it.
pub struct RequestHead {
    pub method: String,
    pub uri: Vec<u8>,
    pub request_uri: String,
    pub query: String,
    pub http_version: String,
    pub host: String,
    pub headers: Vec<Header>,
}

impl RequestHead {
    pub fn from_parts(parts: &hyper::http::request::Parts) -> Result<Self, BadPath> {
        let path = parts.uri.path();
        let query = parts.uri.query().unwrap_or("").to_string();
        let request_uri = parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str().to_string())
            .unwrap_or_else(|| path.to_string());
        let host = authority(parts)
            .map(crate::site::hosts::strip_port)
            .unwrap_or_default()
            .to_ascii_lowercase();
        let http_version = match parts.version {
            hyper::Version::HTTP_10 => "1.0",
            hyper::Version::HTTP_2 => "2.0",
            hyper::Version::HTTP_3 => "3.0",
            _ => "1.1",
        };
        let headers = parts
            .headers
            .iter()
            .map(|(name, value)| Header {
                name: name.as_str().to_string(),
                value: value.as_bytes().to_vec(),
            })
            .collect();
        Ok(RequestHead {
            method: parts.method.as_str().to_string(),
            uri: normalize_path(path)?,
            request_uri,
            query,
            http_version: http_version.to_string(),
            host,
            headers,
        })
    }

    /// The request record the guest receives.
    pub fn into_request(
        self,
        body: Vec<u8>,
        local: SocketAddr,
        remote: SocketAddr,
        tls: Option<&crate::accept::TlsInfo>,
    ) -> Request {
        let start_time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        Request {
            method: self.method,
            uri: self.uri,
            request_uri: self.request_uri,
            query: self.query,
            http_version: self.http_version,
            scheme: if tls.is_some() { "https" } else { "http" }.to_string(),
            host: self.host,
            server_port: local.port(),
            remote_addr: remote.ip().to_string(),
            remote_port: remote.port(),
            ssl_protocol: tls.map_or("", |tls| tls.protocol).to_string(),
            ssl_server_name: tls
                .and_then(|tls| tls.server_name.clone())
                .unwrap_or_default(),
            headers: self.headers,
            body,
            start_time,
        }
    }
}

/// The host a request is for, decided once for routing to a tenant and for
/// `ngx.var.host` alike: the authority of the request target when it has
/// one (an absolute-form URI, or HTTP/2's `:authority`; RFC 9112 says a
/// `Host` header is then ignored, and nginx's `$host` takes it first), else
/// the `Host` header.
pub fn authority(parts: &hyper::http::request::Parts) -> Option<&str> {
    parts.uri.authority().map(|a| a.as_str()).or_else(|| {
        parts
            .headers
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str) -> Result<String, BadPath> {
        normalize_path(path).map(|p| String::from_utf8(p).unwrap())
    }

    #[test]
    fn paths_are_normalized_like_nginx() {
        assert_eq!(norm("/").unwrap(), "/");
        assert_eq!(norm("/a/b.lua").unwrap(), "/a/b.lua");
        assert_eq!(norm("//a///b/").unwrap(), "/a/b/");
        assert_eq!(norm("/a/./b/../c").unwrap(), "/a/c");
        assert_eq!(norm("/a/%62%20c").unwrap(), "/a/b c");
        assert_eq!(norm("/a/..").unwrap(), "/");
    }

    #[test]
    fn hostile_paths_are_refused() {
        assert_eq!(norm("/.."), Err(BadPath::AboveRoot));
        assert_eq!(norm("/a/../../etc/passwd"), Err(BadPath::AboveRoot));
        assert_eq!(norm("/%2e%2e/etc/passwd"), Err(BadPath::AboveRoot));
        assert_eq!(norm("/%2E%2E%2fetc"), Err(BadPath::AboveRoot));
        assert_eq!(norm("/a%00.lua"), Err(BadPath::Nul));
        assert_eq!(norm("/a%zz"), Err(BadPath::BadEscape));
        assert_eq!(norm("/a%2"), Err(BadPath::BadEscape));
        assert_eq!(norm("a"), Err(BadPath::NotAbsolute));
    }

    #[test]
    fn ports_are_stripped_from_hosts() {
        use crate::site::hosts::strip_port;
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }
}
