//! The HTTP capability: the host side of `wit/http.wit`'s imports, the
//! response leaving the guest, its log lines, and the digests of the `ngx`
//! API. Its per-run state is the request being served ([`HttpState`]), in
//! [`super::RunCaps`] like every capability's; a run that serves no request
//! has none, and these imports then stop it.
//!
//! The guest is hostile, so every status, header name and value, body byte
//! and log line is checked and bounded here before it goes anywhere.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use base64::Engine as _;
use bytes::Bytes;
use hmac::{KeyInit, Mac};
use hyper::header::{HeaderName, HeaderValue};
use md5::Digest;

use wasmtime::component::{HasSelf, Linker};

use super::RunCaps;
use crate::bindings::header_block::{self, HeaderBlockError};
use crate::bindings::moonwall::sandbox::{codec, http_types, log, response};
use crate::sandbox::HostWork;
use crate::sandbox::host_api::HostStop;
use crate::sandbox::log_text;
use crate::sandbox::outcome::Limit;

/// What a [`ResponseSink`] returns when it may have to wait.
pub type SinkFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where a response goes: a client connection, or memory (`moonwall request`).
pub trait ResponseSink: Send + std::any::Any {
    fn send_head(&mut self, status: u16, headers: Vec<(HeaderName, HeaderValue)>);
    /// Pass on part of the body; `false` once the client has gone away.
    /// May wait while the client is slow to read: the guest is suspended
    /// meanwhile, its deadline still running.
    fn write(&mut self, chunk: Bytes) -> SinkFuture<'_, bool>;
    fn flush(&mut self);
    /// The response cannot be completed: end it so that the client sees it
    /// is incomplete (a cut connection, never a clean end).
    fn abort(&mut self) -> SinkFuture<'_, ()>;
}

/// A response kept in memory.
#[derive(Debug, Default, Clone)]
pub struct CollectedResponse {
    pub status: Option<u16>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Vec<u8>,
    /// The response was cut short after its head was sent.
    pub aborted: bool,
}

impl ResponseSink for CollectedResponse {
    fn send_head(&mut self, status: u16, headers: Vec<(HeaderName, HeaderValue)>) {
        self.status = Some(status);
        self.headers = headers;
    }
    fn write(&mut self, chunk: Bytes) -> SinkFuture<'_, bool> {
        self.body.extend_from_slice(&chunk);
        Box::pin(std::future::ready(true))
    }
    fn flush(&mut self) {}
    fn abort(&mut self) -> SinkFuture<'_, ()> {
        self.aborted = true;
        Box::pin(std::future::ready(()))
    }
}

/// Most response headers a script may send.
pub const MAX_RESPONSE_HEADERS: usize = 256;
/// Most bytes of response headers (names and values) a script may send.
pub const MAX_RESPONSE_HEADER_BYTES: usize = 64 * 1024;
pub use crate::sandbox::log_text::MAX_LOG_LINE_BYTES;
/// Log bytes one request may write; past this its lines are dropped.
pub const MAX_LOG_BYTES_PER_REQUEST: usize = 64 * 1024;

/// Headers the host owns: framing and connection management are not the
/// script's to decide (a wrong Content-Length would desynchronize the
/// connection). They are dropped from what a script sends.
const HOST_OWNED_HEADERS: &[&str] = &[
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The state of one HTTP request inside its run.
pub struct HttpState {
    sink: Box<dyn ResponseSink>,
    pub(crate) status_sent: Option<u16>,
    pub(crate) body_bytes: u64,
    /// A write found the client gone.
    pub(crate) client_gone: bool,
    /// HEAD requests get headers only.
    discard_body: bool,
    /// Most body bytes the response may have (the run's output limit).
    body_cap: u64,
    log: RequestLog,
}

impl HttpState {
    pub(crate) fn new(
        sink: Box<dyn ResponseSink>,
        discard_body: bool,
        body_cap: usize,
        log: RequestLog,
    ) -> Self {
        HttpState {
            sink,
            status_sent: None,
            body_bytes: 0,
            client_gone: false,
            discard_body,
            body_cap: body_cap as u64,
            log,
        }
    }

    pub(crate) fn into_sink(self) -> Box<dyn ResponseSink> {
        self.sink
    }

    pub(crate) fn request_id(&self) -> u64 {
        self.log.request_id
    }

    /// Where the request's guest text goes.
    pub(crate) fn log(&self) -> &RequestLog {
        &self.log
    }

    pub(crate) async fn abort(&mut self) {
        self.sink.abort().await;
    }

    /// The host's own response when the guest could not send one.
    pub(crate) async fn send_fallback(&mut self, status: u16) {
        if self.status_sent.is_some() {
            return;
        }
        let (headers, page) = host_page(status);
        self.sink.send_head(status, headers.to_vec());
        self.status_sent = Some(status);
        if !self.discard_body {
            self.body_bytes += page.len() as u64;
            self.sink.write(Bytes::from(page)).await;
        }
    }
}

/// The host's own page for `status`, nginx-like, with its headers: what a
/// client gets when the guest sent no response, and for every answer the
/// server gives itself (404, 413, 429, 503...).
pub fn host_page(status: u16) -> ([(HeaderName, HeaderValue); 2], String) {
    let reason = hyper::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let page = format!(
        "<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n<center><h1>{status} {reason}</h1></center>\r\n<hr><center>moonwall</center>\r\n</body>\r\n</html>\r\n"
    );
    let headers = [
        (
            hyper::header::CONTENT_TYPE,
            HeaderValue::from_static("text/html"),
        ),
        (hyper::header::SERVER, HeaderValue::from_static("moonwall")),
    ];
    (headers, page)
}

/// Where a request's log lines go, tagged with its request id. Clones share
/// one budget: a request, its subrequests and its Lua output together write
/// at most [`MAX_LOG_BYTES_PER_REQUEST`].
#[derive(Clone)]
pub struct RequestLog {
    pub request_id: u64,
    pub target: String,
    budget: Arc<LogBudget>,
    /// Lines more verbose than this are dropped (the tenant's `log_level`).
    max_level: log::Level,
}

#[derive(Default)]
struct LogBudget {
    written: AtomicUsize,
    dropped: AtomicBool,
}

impl RequestLog {
    pub fn new(request_id: u64, target: String) -> Self {
        RequestLog {
            request_id,
            target,
            budget: Arc::default(),
            max_level: log::Level::Debug,
        }
    }

    /// Keep only lines at `level` or more severe.
    pub fn with_max_level(mut self, level: log::Level) -> Self {
        self.max_level = level;
        self
    }

    /// The log of a subrequest to `target`: the same request id, level and
    /// budget.
    pub fn for_subrequest(&self, target: String) -> Self {
        RequestLog {
            target,
            ..self.clone()
        }
    }

    /// Log how the request's script failed (its Lua error and traceback):
    /// escaped and cut like every line, but outside the budget and the
    /// tenant's `log_level`, so a script cannot hide its own failure from
    /// the operator. A run fails once, so this is one line per run.
    pub fn failure(&self, text: &[u8]) {
        let text = log_text::escape(text);
        tracing::error!(request_id = self.request_id, path = %self.target, "{text}");
    }

    /// Log guest text at `level`: dropped if more verbose than the tenant's
    /// `log_level` or past the request's budget, else escaped and cut
    /// ([`crate::sandbox::log_text`]).
    pub fn line(&self, level: log::Level, message: &[u8]) {
        if severity(level) > severity(self.max_level) {
            return;
        }
        let cut = message.len().min(MAX_LOG_LINE_BYTES);
        let before = self.budget.written.fetch_add(cut, Ordering::Relaxed);
        if before >= MAX_LOG_BYTES_PER_REQUEST {
            if !self.budget.dropped.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    request_id = self.request_id,
                    "log limit of {MAX_LOG_BYTES_PER_REQUEST} bytes reached; dropping this request's further log lines"
                );
            }
            return;
        }
        let text = log_text::escape(message);
        let id = self.request_id;
        let script = self.target.as_str();
        let name = level_name(level);
        match level {
            log::Level::Stderr
            | log::Level::Emerg
            | log::Level::Alert
            | log::Level::Crit
            | log::Level::Err => {
                tracing::error!(request_id = id, path = script, lua_level = name, "{text}")
            }
            log::Level::Warn => tracing::warn!(request_id = id, path = script, "{text}"),
            log::Level::Notice | log::Level::Info => {
                tracing::info!(request_id = id, path = script, lua_level = name, "{text}")
            }
            log::Level::Debug => tracing::debug!(request_id = id, path = script, "{text}"),
        }
    }
}

/// 0 for the most severe level, 8 for debug.
fn severity(level: log::Level) -> u8 {
    level as u8
}

/// nginx's level names, most severe first: `ngx.log`'s levels, and the
/// names a policy's `log_level` accepts.
pub const LOG_LEVELS: [(&str, log::Level); 9] = [
    ("stderr", log::Level::Stderr),
    ("emerg", log::Level::Emerg),
    ("alert", log::Level::Alert),
    ("crit", log::Level::Crit),
    ("error", log::Level::Err),
    ("warn", log::Level::Warn),
    ("notice", log::Level::Notice),
    ("info", log::Level::Info),
    ("debug", log::Level::Debug),
];

/// nginx's name for a level.
fn level_name(level: log::Level) -> &'static str {
    LOG_LEVELS[usize::from(severity(level))].0
}

fn http_state(state: &mut RunCaps) -> wasmtime::Result<&mut HttpState> {
    state
        .http
        .as_mut()
        .ok_or_else(|| wasmtime::Error::msg("an HTTP import was called outside an HTTP request"))
}

/// Validate what a script sends as response headers (a header block,
/// wit/http.wit); the first problem wins. Counts and lengths are checked
/// before anything is built.
fn validate_headers(block: &[u8]) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    let headers = header_block::decode(block, MAX_RESPONSE_HEADERS, MAX_RESPONSE_HEADER_BYTES)
        .map_err(|e| match e {
            HeaderBlockError::TooMany { .. } => {
                format!("too many response headers (at most {MAX_RESPONSE_HEADERS})")
            }
            HeaderBlockError::TooLarge { .. } => {
                format!("response headers too large (at most {MAX_RESPONSE_HEADER_BYTES} bytes)")
            }
            malformed @ HeaderBlockError::Malformed { .. } => {
                format!("response headers: {malformed}")
            }
        })?;
    let mut valid = Vec::with_capacity(headers.len() + 1);
    let mut has_server = false;
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name).map_err(|_| {
            format!(
                "invalid response header name {:?}",
                String::from_utf8_lossy(name)
            )
        })?;
        let value = HeaderValue::from_bytes(value)
            .map_err(|_| format!("invalid value for response header {name}"))?;
        if HOST_OWNED_HEADERS.contains(&name.as_str()) {
            continue;
        }
        has_server |= name == hyper::header::SERVER;
        valid.push((name, value));
    }
    if !has_server {
        valid.push((hyper::header::SERVER, HeaderValue::from_static("moonwall")));
    }
    Ok(valid)
}

impl response::Host for RunCaps {
    fn send_head(&mut self, status: u16, headers: Vec<u8>) -> wasmtime::Result<Result<(), String>> {
        let http = http_state(self)?;
        if http.status_sent.is_some() {
            return Ok(Err("response headers already sent".into()));
        }
        // 1xx are the connection's business (an upgrade to a protocol the
        // host does not speak, interim responses), never a script's.
        if !(200..=599).contains(&status) {
            return Ok(Err(format!("invalid response status {status}")));
        }
        let headers = match validate_headers(&headers) {
            Ok(headers) => headers,
            Err(message) => return Ok(Err(message)),
        };
        http.sink.send_head(status, headers);
        http.status_sent = Some(status);
        Ok(Ok(()))
    }

    async fn write(&mut self, bytes: Vec<u8>) -> wasmtime::Result<Result<(), String>> {
        let RunCaps {
            http,
            cpu,
            tasks,
            deadline,
            time_limit,
            ..
        } = self;
        let http = http.as_mut().ok_or_else(|| {
            wasmtime::Error::msg("an HTTP import was called outside an HTTP request")
        })?;
        let cap = http.body_cap;
        if http.status_sent.is_none() {
            return Ok(Err("response body before its headers".into()));
        }
        if http.discard_body {
            return Ok(Ok(()));
        }
        let total = http.body_bytes + bytes.len() as u64;
        if total > cap {
            return Err(wasmtime::Error::new(HostStop::Limit(Limit::Output {
                limit_bytes: cap as usize,
            })));
        }
        http.body_bytes = total;
        // A slow client makes the run wait, off the CPU.
        let waiting = super::Waiting {
            cpu,
            ops: &mut tasks.ops,
            deadline: *deadline,
            time_limit: *time_limit,
        };
        if !waiting.off_cpu(http.sink.write(Bytes::from(bytes))).await? {
            http.client_gone = true;
            return Ok(Err("client closed the connection".into()));
        }
        Ok(Ok(()))
    }

    fn flush(&mut self) -> wasmtime::Result<()> {
        http_state(self)?.sink.flush();
        Ok(())
    }
}

/// `http-types` holds only types.
impl http_types::Host for RunCaps {}

impl log::Host for RunCaps {
    fn write(&mut self, level: log::Level, message: Vec<u8>) -> wasmtime::Result<()> {
        http_state(self)?.log.line(level, &message);
        Ok(())
    }
}

/// Fuel per byte hashed by `md5`, `sha1` and `hmac-sha1`: about what the
/// same CPU time costs a guest (which burns ~10 fuel a nanosecond; these
/// hashes take ~1.5 ns a byte).
pub const DIGEST_FUEL_PER_BYTE: u64 = 16;
/// Fuel per byte for `crc32` and base64 (encoded or decoded), on the same
/// scale (~0.1 to 0.5 ns a byte).
pub const CODEC_FUEL_PER_BYTE: u64 = 4;
/// Bytes hashed or encoded between two checks of the run's deadline (and
/// two charges of its fuel).
pub const CODEC_CHUNK_BYTES: usize = 1 << 20;

/// Feed `data` to `update` in chunks of [`CODEC_CHUNK_BYTES`] (of a multiple
/// of `unit`), each paid for at `rate` fuel a byte before it is done and
/// after a check of the deadline.
fn metered(
    work: &mut HostWork,
    data: &[u8],
    rate: u64,
    unit: usize,
    mut update: impl FnMut(&[u8]),
) -> wasmtime::Result<()> {
    let chunk = CODEC_CHUNK_BYTES / unit * unit;
    for piece in data.chunks(chunk) {
        work.step(HostWork::cost(piece.len(), rate))?;
        update(piece);
    }
    Ok(())
}

// Every output below is a fixed size or proportional to an input the guest
// already held in its own memory (at most its memory cap); the work is
// paid for in fuel, in chunks, each after a check of the deadline.
impl codec::Host for RunCaps {
    fn md5(&mut self, data: Vec<u8>) -> wasmtime::Result<Vec<u8>> {
        let mut hasher = md5::Md5::new();
        metered(&mut self.work, &data, DIGEST_FUEL_PER_BYTE, 1, |piece| {
            hasher.update(piece)
        })?;
        Ok(hasher.finalize().to_vec())
    }

    fn sha1(&mut self, data: Vec<u8>) -> wasmtime::Result<Vec<u8>> {
        let mut hasher = sha1::Sha1::new();
        metered(&mut self.work, &data, DIGEST_FUEL_PER_BYTE, 1, |piece| {
            hasher.update(piece)
        })?;
        Ok(hasher.finalize().to_vec())
    }

    fn hmac_sha1(&mut self, key: Vec<u8>, data: Vec<u8>) -> wasmtime::Result<Vec<u8>> {
        self.work
            .step(HostWork::cost(key.len(), DIGEST_FUEL_PER_BYTE))?;
        let mut mac =
            hmac::Hmac::<sha1::Sha1>::new_from_slice(&key).map_err(wasmtime::Error::msg)?;
        metered(&mut self.work, &data, DIGEST_FUEL_PER_BYTE, 1, |piece| {
            mac.update(piece)
        })?;
        Ok(mac.finalize().into_bytes().to_vec())
    }

    fn crc32(&mut self, data: Vec<u8>) -> wasmtime::Result<u32> {
        let mut hasher = crc32fast::Hasher::new();
        metered(&mut self.work, &data, CODEC_FUEL_PER_BYTE, 1, |piece| {
            hasher.update(piece)
        })?;
        Ok(hasher.finalize())
    }

    fn base64_encode(&mut self, data: Vec<u8>, no_padding: bool) -> wasmtime::Result<Vec<u8>> {
        let engine = if no_padding {
            &base64::engine::general_purpose::STANDARD_NO_PAD
        } else {
            &base64::engine::general_purpose::STANDARD
        };
        // Whole groups of 3 bytes encode alone, without padding: only the
        // last chunk can have any.
        let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
        metered(&mut self.work, &data, CODEC_FUEL_PER_BYTE, 3, |piece| {
            engine.encode_string(piece, &mut out)
        })?;
        Ok(out.into_bytes())
    }

    fn base64_decode(&mut self, data: Vec<u8>) -> wasmtime::Result<Option<Vec<u8>>> {
        // nginx accepts base64 with or without its padding.
        const LENIENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        // Chunks before the last are whole groups of 4 characters, which
        // decode alone and may not have padding (as in the whole text).
        const MIDDLE: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone),
        );
        let chunk = CODEC_CHUNK_BYTES / 4 * 4;
        let mut out = Vec::with_capacity(data.len() / 4 * 3 + 3);
        let mut pieces = data.chunks(chunk).peekable();
        while let Some(piece) = pieces.next() {
            self.work
                .step(HostWork::cost(piece.len(), CODEC_FUEL_PER_BYTE))?;
            let engine = if pieces.peek().is_some() {
                &MIDDLE
            } else {
                &LENIENT
            };
            if engine.decode_vec(piece, &mut out).is_err() {
                return Ok(None);
            }
        }
        Ok(Some(out))
    }
}

/// The log capability's key of a policy's `[capabilities]`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Section {
    /// The most verbose `ngx.log` level that reaches the server's log.
    log_level: Option<toml::Spanned<String>>,
}

/// What a policy's log section checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The most verbose `ngx.log` level that reaches the server's log.
    pub log_level: log::Level,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            log_level: log::Level::Warn,
        }
    }
}

impl super::policy::PolicySection for Section {
    type Config = Config;

    fn apply(self, cx: &mut super::policy::PolicyContext) -> Config {
        let mut config = Config::default();
        let Some(level) = &self.log_level else {
            return config;
        };
        match LOG_LEVELS.iter().find(|(name, _)| name == level.get_ref()) {
            Some(&(_, level)) => config.log_level = level,
            None => cx.problems.at(
                level.span(),
                format!(
                    "log_level `{}` is not one of {}",
                    level.get_ref(),
                    LOG_LEVELS.map(|(name, _)| name).join(", ")
                ),
            ),
        }
        config
    }
}

/// The capability: the response, the log and the digests; its per-run state is the request being served (set by whoever runs it).
pub struct Http;

impl super::Capability for Http {
    type Section = Section;
    type Config = Config;
    type Grant = ();
    type State = Option<HttpState>;

    fn grant(
        _: &str,
        config: &Config,
        _: Option<&()>,
        settings: &super::CapsSettings,
    ) -> Result<(), String> {
        let _ = (config, settings);
        Ok(())
    }

    fn add_to_linker<T: Send + 'static>(
        linker: &mut Linker<T>,
        get: super::Project<T>,
    ) -> wasmtime::Result<()> {
        response::add_to_linker::<T, HasSelf<RunCaps>>(linker, get)?;
        http_types::add_to_linker::<T, HasSelf<RunCaps>>(linker, get)?;
        log::add_to_linker::<T, HasSelf<RunCaps>>(linker, get)?;
        codec::add_to_linker::<T, HasSelf<RunCaps>>(linker, get)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_names_follow_the_wit_order() {
        for (at, (name, level)) in LOG_LEVELS.iter().enumerate() {
            assert_eq!(usize::from(severity(*level)), at);
            assert_eq!(level_name(*level), *name);
        }
    }

    #[test]
    fn response_headers_are_validated() {
        let block = |headers: &[(&[u8], &[u8])]| header_block::encode(headers.iter().copied());
        let ok = validate_headers(&block(&[(b"X-A", b"1"), (b"Content-Length", b"5")])).unwrap();
        let names: Vec<&str> = ok.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["x-a", "server"]);
        assert_eq!(
            validate_headers(&block(&[(b"Bad Name", b"1")])),
            Err("invalid response header name \"Bad Name\"".into())
        );
        assert_eq!(
            validate_headers(&block(&[(b"X", b"a\r\nInjected: 1")])),
            Err("invalid value for response header x".into())
        );
        assert_eq!(
            validate_headers(&block(&[(&b"X"[..], &b"v"[..]); MAX_RESPONSE_HEADERS + 1])),
            Err("too many response headers (at most 256)".into())
        );
        let big = vec![b'v'; MAX_RESPONSE_HEADER_BYTES];
        assert_eq!(
            validate_headers(&block(&[(b"X", &big)])),
            Err("response headers too large (at most 65536 bytes)".into())
        );
        // What only a modified guest sends: a length past the block's end.
        let mut aliased = block(&[(b"X", b"v")]);
        aliased.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            validate_headers(&aliased),
            Err("response headers: malformed header block: header 1's name at byte 10: its length runs past the end of the block".into())
        );
    }
}
