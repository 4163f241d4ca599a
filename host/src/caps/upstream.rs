//! Proxied locations (`wit/upstream.wit`): the content phase of a location
//! with `proxy = "http://NAME"` passes the request to that upstream and
//! streams its answer back through the guest's filters.
//!
//! The operator declares upstreams (`site::upstreams`); a tenant's policy
//! grants them by name (`[capabilities] upstreams = [...]`), and only its
//! locations name them, so a script never chooses an address: the host
//! takes the peers from the location's upstream, in turn, trying the next
//! on a failed connect. Everything the guest hands over is checked here
//! (method, target, header names and values, bounds), the host adds the
//! forwarding headers itself, and every wait is bounded by the upstream's
//! timeouts and, like all waits, the run's deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue};
use hyper_util::rt::TokioIo;
use wasmtime::component::{HasSelf, Linker};

use super::RunCaps;
use crate::bindings::header_block;
use crate::bindings::moonwall::sandbox::upstream as wit;
use crate::site::upstreams::{HostHeader, Upstream, Upstreams};

/// The request headers a guest may hand over: count and bytes.
pub const MAX_REQUEST_HEADERS: usize = 1000;
pub const MAX_REQUEST_HEADER_BYTES: usize = 64 << 10;
/// The longest request target (path and query).
pub const MAX_TARGET_BYTES: usize = 8 << 10;
/// The most of the body one read hands the guest.
pub const MAX_READ_BYTES: usize = 64 << 10;
/// The upstream's response head: header count and bytes.
pub const MAX_RESPONSE_HEADERS: usize = 100;
pub const MAX_RESPONSE_HEAD_BYTES: usize = 64 << 10;

/// Where a proxied request goes, and who asked: set by the server for a
/// request whose location is proxied.
#[derive(Debug, Clone)]
pub struct ProxyTarget {
    pub upstream: Arc<Upstream>,
    /// The client's address (`X-Forwarded-For`, `X-Real-IP`).
    pub client: SocketAddr,
    /// `http` or `https` (`X-Forwarded-Proto`).
    pub scheme: &'static str,
}

/// A run's proxying: its target, and once the head came, the body being
/// read.
#[derive(Default)]
pub struct State {
    target: Option<ProxyTarget>,
    /// Sends so far; another is allowed only after a failure that never
    /// reached a peer, up to the upstream's `tries`.
    sends: usize,
    /// No more sends: one is in progress, or one was answered.
    closed: bool,
    body: Option<Box<Reading>>,
    /// A read is in progress (the body is in its future).
    reading: bool,
}

/// The upstream's body, being read, with the connection to keep once it is
/// read to its end.
struct Reading {
    body: Incoming,
    /// What the last frame held beyond the bytes handed over.
    rest: Bytes,
    read_timeout: Duration,
    peer: SocketAddr,
    upstream: Arc<Upstream>,
    sender: SendRequest<Full<Bytes>>,
}

type Failure = wit::Failure;

fn failure(status: u16, message: impl Into<String>, tried: &[SocketAddr]) -> Failure {
    Failure {
        status,
        message: message.into(),
        addr: addresses(tried),
        retry: false,
    }
}

/// The timeouts of one exchange: the upstream's, or shorter ones a
/// balancer set.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    connect: Duration,
    send: Duration,
    read: Duration,
}

fn addresses(tried: &[SocketAddr]) -> String {
    tried
        .iter()
        .map(SocketAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Headers never passed on, either way: hop-by-hop ones, and the framing,
/// which each side sets for itself.
fn hop_by_hop(name: &HeaderName) -> bool {
    use hyper::header;
    [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::CONTENT_LENGTH,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// The request the guest described, checked, with the forwarding headers.
fn build_request(
    target: &ProxyTarget,
    method: &[u8],
    path: &[u8],
    block: &[u8],
    body: Vec<u8>,
) -> Result<hyper::Request<Full<Bytes>>, String> {
    if method.is_empty() || method.len() > 32 {
        return Err("proxy: invalid method".into());
    }
    let method =
        hyper::Method::from_bytes(method).map_err(|_| "proxy: invalid method".to_string())?;
    if path.len() > MAX_TARGET_BYTES {
        return Err(format!(
            "proxy: the request target is longer than {MAX_TARGET_BYTES} bytes"
        ));
    }
    if !path.starts_with(b"/") || !path.iter().all(|b| (0x21..0x7f).contains(b)) {
        return Err("proxy: invalid request target".into());
    }
    let uri =
        hyper::Uri::try_from(path).map_err(|_| "proxy: invalid request target".to_string())?;
    let headers = header_block::decode(block, MAX_REQUEST_HEADERS, MAX_REQUEST_HEADER_BYTES)
        .map_err(|error| format!("proxy: request headers: {error}"))?;
    let mut request = hyper::Request::new(Full::new(Bytes::from(body)));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    let map = request.headers_mut();
    let mut client_host = None;
    let mut forwarded_for = None;
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name)
            .map_err(|_| "proxy: invalid request header name".to_string())?;
        let value = HeaderValue::from_bytes(value)
            .map_err(|_| format!("proxy: invalid value of request header {name}"))?;
        if hop_by_hop(&name) {
            continue;
        }
        match name.as_str() {
            "host" => client_host = Some(value),
            "x-forwarded-for" => forwarded_for = Some(value),
            "x-real-ip" | "x-forwarded-proto" => {}
            _ => {
                map.append(name, value);
            }
        }
    }
    let host = match (target.upstream.host_header, client_host) {
        (HostHeader::Client, Some(host)) => host,
        _ => HeaderValue::from_str(&target.upstream.name)
            .map_err(|_| "proxy: invalid upstream name".to_string())?,
    };
    map.insert(hyper::header::HOST, host);
    let client = target.client.ip().to_string();
    // nginx's $proxy_add_x_forwarded_for: the client's list, then the client.
    let forwarded = match forwarded_for.as_ref().and_then(|v| v.to_str().ok()) {
        Some(list) if !list.is_empty() => format!("{list}, {client}"),
        _ => client.clone(),
    };
    let value = |text: &str| {
        HeaderValue::from_str(text).map_err(|_| "proxy: invalid forwarding header".to_string())
    };
    map.insert("x-forwarded-for", value(&forwarded)?);
    map.insert("x-real-ip", value(&client)?);
    map.insert("x-forwarded-proto", value(target.scheme)?);
    Ok(request)
}

/// A connection to `peer`: an idle one of the upstream's, else a new one
/// ([`connect`]); whether it was kept.
async fn connection(
    upstream: &Upstream,
    peer: SocketAddr,
    tls: Option<&Arc<rustls::ClientConfig>>,
    timeouts: Timeouts,
) -> Result<(SendRequest<Full<Bytes>>, bool), String> {
    while let Some(idle) = upstream.take_idle(peer) {
        if let Ok(mut sender) = idle.downcast::<SendRequest<Full<Bytes>>>()
            && !sender.is_closed()
            && sender.ready().await.is_ok()
        {
            return Ok((*sender, true));
        }
    }
    Ok((connect(upstream, peer, tls, timeouts).await?, false))
}

/// A new connection to `peer`, within the connect timeout: TCP, then for
/// a TLS upstream the handshake (the certificate verified for the
/// upstream's server name), then HTTP/1.
async fn connect(
    upstream: &Upstream,
    peer: SocketAddr,
    tls: Option<&Arc<rustls::ClientConfig>>,
    timeouts: Timeouts,
) -> Result<SendRequest<Full<Bytes>>, String> {
    let deadline = tokio::time::Instant::now() + timeouts.connect;
    let stream = tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect(peer))
        .await
        .map_err(|_| format!("connect to {peer} timed out"))?
        .map_err(|error| format!("connect to {peer} failed: {error}"))?;
    let _ = stream.set_nodelay(true);
    match (tls, &upstream.tls) {
        (Some(config), Some(name)) => {
            let name = crate::caps::tcp::tls::server_name(name.as_bytes())?;
            let connector = tokio_rustls::TlsConnector::from(config.clone());
            let stream = tokio::time::timeout_at(deadline, connector.connect(name, stream))
                .await
                .map_err(|_| format!("TLS handshake with {peer} timed out"))?
                .map_err(|error| {
                    format!(
                        "TLS handshake with {peer}: {}",
                        crate::caps::tcp::tls::handshake_error(&error)
                    )
                })?;
            http1(TokioIo::new(stream), peer).await
        }
        _ => http1(TokioIo::new(stream), peer).await,
    }
}

/// HTTP/1 on `io`, its connection driven by a task of its own.
async fn http1<I>(io: I, peer: SocketAddr) -> Result<SendRequest<Full<Bytes>>, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::Builder::new()
        .max_headers(MAX_RESPONSE_HEADERS)
        .max_buf_size(MAX_RESPONSE_HEAD_BYTES)
        .handshake(io)
        .await
        .map_err(|error| format!("connect to {peer} failed: {error}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// Send `request` to the upstream's peers in turn until one answers with a
/// head: a failed connect moves on to the next peer; a failure once the
/// request went out is the answer (502, or 504 for a timeout).
async fn exchange(
    upstream: Arc<Upstream>,
    tls: Option<Arc<rustls::ClientConfig>>,
    request: hyper::Request<Full<Bytes>>,
    chosen: Option<SocketAddr>,
    timeouts: Timeouts,
) -> (Result<wit::Head, Failure>, Option<Box<Reading>>) {
    let started = Instant::now();
    let peers = match chosen {
        Some(peer) => vec![peer],
        None => upstream.peers_to_try(),
    };
    let mut tried = Vec::new();
    let mut last_error = String::new();
    for peer in peers {
        tried.push(peer);
        let (mut sender, reused) = match connection(&upstream, peer, tls.as_ref(), timeouts).await {
            Ok(connection) => connection,
            Err(error) => {
                last_error = error;
                continue;
            }
        };
        let connected = started.elapsed();
        let wait = timeouts.send + timeouts.read;
        let answer = tokio::time::timeout(wait, sender.send_request(clone_request(&request))).await;
        let response = match answer {
            Err(_) => {
                let message = format!("{peer} did not answer within {} ms", wait.as_millis());
                return (Err(failure(504, message, &tried)), None);
            }
            // A kept connection the peer closed meanwhile: once more, anew.
            Ok(Err(error)) if reused && (error.is_canceled() || error.is_closed()) => {
                match retry_fresh(&upstream, peer, tls.as_ref(), timeouts, &request).await {
                    Ok(pair) => pair,
                    Err(failed) => return (Err(failure(failed.0, failed.1, &tried)), None),
                }
            }
            Ok(Err(error)) => {
                let message = format!("{peer}: {error}");
                return (Err(failure(502, message, &tried)), None);
            }
            Ok(Ok(response)) => (sender, response),
        };
        let (sender, response) = response;
        let (parts, body) = response.into_parts();
        let headers = parts
            .headers
            .iter()
            .filter(|(name, _)| !hop_by_hop(name))
            .map(|(name, value)| (name.as_str().as_bytes().to_vec(), value.as_bytes().to_vec()))
            .collect();
        let head = wit::Head {
            status: parts.status.as_u16(),
            headers,
            addr: addresses(&tried),
            connect_ms: millis(connected),
            header_ms: millis(started.elapsed()),
        };
        let reading = Reading {
            body,
            rest: Bytes::new(),
            read_timeout: timeouts.read,
            peer,
            upstream: upstream.clone(),
            sender,
        };
        return (Ok(head), Some(Box::new(reading)));
    }
    let mut failed = failure(502, last_error, &tried);
    failed.retry = true;
    (Err(failed), None)
}

/// A fresh connection's try at `request`: the connection and its answer, or
/// (status, message).
async fn retry_fresh(
    upstream: &Upstream,
    peer: SocketAddr,
    tls: Option<&Arc<rustls::ClientConfig>>,
    timeouts: Timeouts,
    request: &hyper::Request<Full<Bytes>>,
) -> Result<(SendRequest<Full<Bytes>>, hyper::Response<Incoming>), (u16, String)> {
    let wait = timeouts.send + timeouts.read;
    let mut sender = connect(upstream, peer, tls, timeouts)
        .await
        .map_err(|e| (502, e))?;
    match tokio::time::timeout(wait, sender.send_request(clone_request(request))).await {
        Err(_) => Err((
            504,
            format!("{peer} did not answer within {} ms", wait.as_millis()),
        )),
        Ok(Err(error)) => Err((502, format!("{peer}: {error}"))),
        Ok(Ok(response)) => Ok((sender, response)),
    }
}

fn clone_request(request: &hyper::Request<Full<Bytes>>) -> hyper::Request<Full<Bytes>> {
    let mut copy = hyper::Request::new(request.body().clone());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.headers_mut() = request.headers().clone();
    copy
}

fn millis(duration: Duration) -> u32 {
    u32::try_from(duration.as_millis()).unwrap_or(u32::MAX)
}

impl Reading {
    /// The next part of the body (at most [`MAX_READ_BYTES`]), or `None`
    /// at its end (when the connection goes back to the upstream's idle
    /// ones).
    async fn next(mut self: Box<Self>) -> (Result<Option<Vec<u8>>, Failure>, Option<Box<Self>>) {
        let tried = [self.peer];
        loop {
            if !self.rest.is_empty() {
                let n = self.rest.len().min(MAX_READ_BYTES);
                let part = self.rest.split_to(n).to_vec();
                return (Ok(Some(part)), Some(self));
            }
            let frame = match tokio::time::timeout(self.read_timeout, self.body.frame()).await {
                Err(_) => {
                    let message = format!(
                        "{} sent nothing of its body for {} ms",
                        self.peer,
                        self.read_timeout.as_millis()
                    );
                    return (Err(failure(504, message, &tried)), None);
                }
                Ok(None) => {
                    let (peer, upstream) = (self.peer, self.upstream.clone());
                    let Reading { sender, .. } = *self;
                    if !sender.is_closed() {
                        upstream.keep_idle(peer, Box::new(sender));
                    }
                    return (Ok(None), None);
                }
                Ok(Some(Err(error))) => {
                    let message = format!("{}: reading the body: {error}", self.peer);
                    return (Err(failure(502, message, &tried)), None);
                }
                Ok(Some(Ok(frame))) => frame,
            };
            if let Ok(data) = frame.into_data() {
                self.rest = data;
            }
        }
    }
}

impl wit::Host for RunCaps {
    async fn proxied(&mut self) -> wasmtime::Result<bool> {
        Ok(self.upstream.target.is_some())
    }

    async fn send(
        &mut self,
        method: Vec<u8>,
        target: Vec<u8>,
        headers: Vec<u8>,
        body: Vec<u8>,
        peer: Option<Vec<u8>>,
        timeouts: Option<wit::Timeouts>,
    ) -> wasmtime::Result<Result<u32, String>> {
        let Some(proxy) = &self.upstream.target else {
            return Ok(Err("proxy: this location is not proxied".into()));
        };
        if self.upstream.closed {
            return Ok(Err("proxy: the request was sent already".into()));
        }
        let upstream = &proxy.upstream;
        if self.upstream.sends >= upstream.tries.max(1) {
            return Ok(Err(format!(
                "proxy: no tries left ({} for upstream {})",
                upstream.tries, upstream.name
            )));
        }
        // A balancer picks among the operator's peers, never elsewhere.
        let chosen = match peer {
            None => None,
            Some(peer) => {
                let text = String::from_utf8_lossy(&peer[..peer.len().min(64)]).into_owned();
                match text.parse::<SocketAddr>() {
                    Ok(address) if upstream.peers.contains(&address) => Some(address),
                    _ => {
                        return Ok(Err(format!(
                            "proxy: peer {text:?} is not one of upstream {}'s",
                            upstream.name
                        )));
                    }
                }
            }
        };
        let at_most = |ms: u32, limit: Duration| {
            Duration::from_millis(ms.into())
                .min(limit)
                .max(Duration::from_millis(1))
        };
        let timeouts = match timeouts {
            None => Timeouts {
                connect: upstream.connect_timeout,
                send: upstream.send_timeout,
                read: upstream.read_timeout,
            },
            Some(set) => Timeouts {
                connect: at_most(set.connect_ms, upstream.connect_timeout),
                send: at_most(set.send_ms, upstream.send_timeout),
                read: at_most(set.read_ms, upstream.read_timeout),
            },
        };
        let request = match build_request(proxy, &method, &target, &headers, body) {
            Ok(request) => request,
            Err(error) => return Ok(Err(error)),
        };
        let tls = match &proxy.upstream.tls {
            Some(_) => match self.grants.upstream.config(true) {
                Ok(config) => Some(config),
                Err(error) => return Ok(Err(format!("proxy: {error}"))),
            },
            None => None,
        };
        let upstream = upstream.clone();
        let started = self
            .tasks
            .ops
            .start(exchange(upstream, tls, request, chosen, timeouts));
        if started.is_ok() {
            self.upstream.sends += 1;
            self.upstream.closed = true;
        }
        Ok(started)
    }

    async fn finish_send(&mut self, op: u32) -> wasmtime::Result<Result<wit::Head, Failure>> {
        type Sent = (Result<wit::Head, Failure>, Option<Box<Reading>>);
        match self.tasks.ops.finish::<Sent>(op) {
            Ok((head, reading)) => {
                self.upstream.body = reading;
                // A connect that failed everywhere leaves room for another
                // try (a balancer's next pick).
                if head.as_ref().is_err_and(|failure| failure.retry) {
                    self.upstream.closed = false;
                }
                Ok(head)
            }
            Err(error) => Ok(Err(failure(502, error, &[]))),
        }
    }

    async fn read(&mut self) -> wasmtime::Result<Result<u32, String>> {
        if self.upstream.reading {
            return Ok(Err("proxy: a read is in progress".into()));
        }
        let Some(reading) = self.upstream.body.take() else {
            return Ok(Err("proxy: no upstream body to read".into()));
        };
        let started = self.tasks.ops.start(reading.next());
        self.upstream.reading = started.is_ok();
        Ok(started)
    }

    async fn finish_read(&mut self, op: u32) -> wasmtime::Result<Result<Option<Vec<u8>>, Failure>> {
        type Read = (Result<Option<Vec<u8>>, Failure>, Option<Box<Reading>>);
        match self.tasks.ops.finish::<Read>(op) {
            Ok((part, reading)) => {
                self.upstream.reading = false;
                self.upstream.body = reading;
                Ok(part)
            }
            Err(error) => Ok(Err(failure(502, error, &[]))),
        }
    }
}

/// The upstreams keys of a policy's `[capabilities]`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Section {
    /// The operator's upstreams (server config) this tenant's locations may
    /// proxy to.
    upstreams: Option<Vec<toml::Spanned<String>>>,
}

impl super::policy::PolicySection for Section {
    type Config = Vec<String>;

    fn apply(self, cx: &mut super::policy::PolicyContext) -> Vec<String> {
        let mut granted = Vec::new();
        for name in self.upstreams.iter().flatten() {
            if cx.upstreams.get(name.get_ref()).is_none() {
                let known: Vec<&str> = cx.upstreams.0.keys().map(String::as_str).collect();
                cx.problems.at(
                    name.span(),
                    format!(
                        "upstreams: `{}` is not declared in the server config ({})",
                        name.get_ref(),
                        if known.is_empty() {
                            "it declares no [upstreams.NAME]".to_string()
                        } else {
                            format!("it declares {}", known.join(", "))
                        }
                    ),
                );
                continue;
            }
            granted.push(name.get_ref().clone());
        }
        granted.sort();
        granted.dedup();
        granted
    }
}

/// The upstreams of `all` that `granted` names.
pub fn granted(all: &Upstreams, granted: &[String]) -> Upstreams {
    Upstreams(
        all.0
            .iter()
            .filter(|(name, _)| granted.contains(name))
            .map(|(name, upstream)| (name.clone(), upstream.clone()))
            .collect(),
    )
}

/// The capability.
pub struct Proxy;

impl super::Capability for Proxy {
    type Section = Section;
    type Config = Vec<String>;
    /// The TLS clients of its `https` upstreams: the server's roots, a
    /// session cache of the tenant's own (a single site's: the system's
    /// roots).
    type Grant = crate::caps::tcp::tls::TlsClients;
    type State = State;

    fn grant(
        _tenant: &str,
        _config: &Vec<String>,
        _previous: Option<&Self::Grant>,
        settings: &super::CapsSettings,
    ) -> Result<Self::Grant, String> {
        Ok(crate::caps::tcp::tls::TlsClients::new(
            settings.tls_roots.clone(),
        ))
    }

    fn state(request: &super::RequestCaps) -> State {
        State {
            target: request.proxy.clone(),
            ..State::default()
        }
    }

    fn add_to_linker<T: Send + 'static>(
        linker: &mut Linker<T>,
        get: super::Project<T>,
    ) -> wasmtime::Result<()> {
        wit::add_to_linker::<T, HasSelf<RunCaps>>(linker, get)
    }
}
