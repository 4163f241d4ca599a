//! One outbound connection: its stream and the bytes read but not yet
//! returned, and the ways to receive (`*l`, `*a`, a count, `receiveuntil`)
//! and send. Every read is bounded by the request's receive budget, so no
//! buffer here grows past it. The stream is plain TCP, or TLS over it once
//! `sslhandshake` succeeded ([`Stream`]).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tokio_rustls::client::TlsStream;

use super::budget::Place;

/// Most bytes read from a stream at once.
pub const CHUNK: usize = 16 << 10;
/// The longest line `*l` returns.
pub const MAX_LINE: usize = 1 << 20;
/// The longest `receiveuntil` pattern.
pub const MAX_PATTERN: usize = 4096;

/// What to receive (the WIT's `receive-pattern`, checked).
#[derive(Debug, Clone)]
pub enum Pattern {
    Line,
    All,
    Bytes(u64),
    Until {
        pattern: Vec<u8>,
        inclusive: bool,
        max: Option<u64>,
    },
}

/// How a read may go: the request's receive budget (bytes received by all
/// of its connections so far, and the most it may receive) and the time a
/// read may wait for data.
#[derive(Clone)]
pub struct ReadBounds {
    pub received: Arc<AtomicU64>,
    pub max_received: u64,
    pub timeout: Duration,
}

/// Why a receive failed.
#[derive(Debug)]
pub enum ReadFail {
    Timeout,
    Closed,
    Limit(u64),
    LineTooLong,
    Io(std::io::Error),
}

impl ReadFail {
    /// OpenResty's message, or moonwall's for its own limits.
    pub fn message(&self) -> String {
        match self {
            ReadFail::Timeout => "timeout".into(),
            ReadFail::Closed => "closed".into(),
            ReadFail::Limit(max) => format!(
                "outbound receive limit reached ({max} bytes per request; policy [capabilities] outbound_max_receive_kib)"
            ),
            ReadFail::LineTooLong => format!("line too long (more than {MAX_LINE} bytes)"),
            ReadFail::Io(error) => io_message(error),
        }
    }

    /// Whether the connection stays usable (a read timeout, as in OpenResty).
    pub fn keeps_connection(&self) -> bool {
        matches!(self, ReadFail::Timeout)
    }
}

/// An I/O error as OpenResty words it.
pub fn io_message(error: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match error.kind() {
        ConnectionRefused => "connection refused".into(),
        ConnectionReset => "connection reset by peer".into(),
        BrokenPipe => "broken pipe".into(),
        TimedOut => "timeout".into(),
        HostUnreachable => "no route to host".into(),
        NetworkUnreachable => "network is unreachable".into(),
        _ => error.to_string(),
    }
}

/// What a TLS connection was made for: it is reused only for the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsMode {
    /// The server name (SNI, and the name the certificate was checked for).
    pub server_name: String,
    /// Whether the certificate was verified.
    pub verify: bool,
}

/// A connection's stream: plain TCP, or TLS over it.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>, TlsMode),
}

impl Stream {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls, _) => tls.get_ref().0,
        }
    }

    /// What the TLS connection was made for; `None` for plain TCP.
    pub fn tls(&self) -> Option<&TlsMode> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(_, mode) => Some(mode),
        }
    }

    /// Whether an idle connection can be kept or handed out: nothing to
    /// read now (the peer neither closed it nor sent anything unasked; a
    /// TLS connection processes what TLS itself sent, such as session
    /// tickets, without returning it).
    pub fn is_idle(&mut self) -> bool {
        self.probe() == Probe::Idle
    }

    /// What an idle connection has to read now, without waiting.
    pub fn probe(&mut self) -> Probe {
        let mut probe = [0u8; 1];
        let mut buf = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(self).poll_read(&mut cx, &mut buf) {
            Poll::Pending => Probe::Idle,
            Poll::Ready(Ok(())) if buf.filled().is_empty() => Probe::Closed,
            Poll::Ready(Err(_)) => Probe::Closed,
            Poll::Ready(Ok(())) => Probe::Data,
        }
    }
}

/// What [`Stream::probe`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Probe {
    /// Nothing to read: the connection is idle.
    Idle,
    /// The peer closed it (or it failed).
    Closed,
    /// The peer sent something nobody asked for.
    Data,
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Tls(tls, _) => match Pin::new(tls).poll_read(cx, buf) {
                // A peer that closes without TLS's close_notify: the end
                // of the stream, as for plain TCP (as OpenResty, and most
                // servers do it).
                Poll::Ready(Err(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                    Poll::Ready(Ok(()))
                }
                other => other,
            },
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write(cx, data),
            Stream::Tls(tls, _) => Pin::new(tls).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Stream::Tls(tls, _) => Pin::new(tls).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Stream::Tls(tls, _) => Pin::new(tls).poll_shutdown(cx),
        }
    }
}

pub struct Conn {
    pub stream: Stream,
    /// Bytes read; those before `pos` are returned already.
    buf: Vec<u8>,
    pos: usize,
    /// How many times the connection was reused from the keepalive pool.
    pub reused: u32,
    /// Its keepalive pool key (destination and pool name).
    pub key: String,
    /// Its place among the tenant's open connections, given back when it
    /// closes (it goes to the keepalive pool with it).
    pub place: Place,
    /// The server name a TLS handshake checks by default: the host the
    /// script connected to.
    pub host: String,
    /// Whether `sslhandshake` was called on it since the connect.
    pub handshaken: bool,
}

impl Conn {
    pub fn new(stream: Stream, reused: u32, key: String, place: Place, host: String) -> Conn {
        // As OpenResty's cosockets: small requests go out at once.
        let _ = stream.tcp().set_nodelay(true);
        Conn {
            stream,
            buf: Vec::new(),
            pos: 0,
            reused,
            key,
            place,
            host,
            handshaken: false,
        }
    }

    /// Whether bytes were read and not returned yet.
    pub fn has_unread(&self) -> bool {
        self.pos < self.buf.len()
    }

    fn unread(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Return the next `n` unread bytes.
    fn take(&mut self, n: usize) -> Vec<u8> {
        let data = self.buf[self.pos..self.pos + n].to_vec();
        self.pos += n;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        data
    }

    fn take_all(&mut self) -> Vec<u8> {
        self.take(self.buf.len() - self.pos)
    }

    /// Read more bytes: false at the end of the stream.
    async fn fill(&mut self, bounds: &ReadBounds) -> Result<bool, ReadFail> {
        let until = Instant::now() + bounds.timeout;
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let read = std::future::poll_fn(|cx| self.poll_fill(cx, bounds));
        match timeout_at(until, read).await {
            Err(_) => Err(ReadFail::Timeout),
            Ok(result) => result,
        }
    }

    /// One attempt to read: the look at the budget and the read that
    /// counts against it happen in one poll, with nothing in between.
    fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        bounds: &ReadBounds,
    ) -> Poll<Result<bool, ReadFail>> {
        let received = bounds.received.load(Ordering::Relaxed);
        let room = bounds.max_received.saturating_sub(received);
        if room == 0 {
            // The budget is spent: only the end of the stream may come.
            let mut probe = [0u8; 1];
            let mut buf = ReadBuf::new(&mut probe);
            return match Pin::new(&mut self.stream).poll_read(cx, &mut buf) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(Ok(false)),
                Poll::Ready(Ok(())) => Poll::Ready(Err(ReadFail::Limit(bounds.max_received))),
                Poll::Ready(Err(error)) => Poll::Ready(Err(ReadFail::Io(error))),
            };
        }
        let want = usize::try_from(room).unwrap_or(CHUNK).min(CHUNK);
        let start = self.buf.len();
        self.buf.resize(start + want, 0);
        let mut buf = ReadBuf::new(&mut self.buf[start..]);
        let polled = Pin::new(&mut self.stream).poll_read(cx, &mut buf);
        let n = buf.filled().len();
        self.buf.truncate(start + n);
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => {
                bounds.received.fetch_add(n as u64, Ordering::Relaxed);
                Poll::Ready(Ok(n > 0))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(ReadFail::Io(error))),
        }
    }

    /// Receive by `pattern`: the data and whether a delimiter was reached
    /// (always true but for `Until` with a `max`), or why not with what was
    /// received (consumed).
    pub async fn receive(
        &mut self,
        pattern: &Pattern,
        bounds: &ReadBounds,
    ) -> Result<(Vec<u8>, bool), (ReadFail, Vec<u8>)> {
        match pattern {
            Pattern::Line => self.receive_line(bounds).await.map(|d| (d, true)),
            Pattern::All => self.receive_all(bounds).await.map(|d| (d, true)),
            Pattern::Bytes(n) => self.receive_bytes(*n, bounds).await.map(|d| (d, true)),
            Pattern::Until {
                pattern,
                inclusive,
                max,
            } => self.receive_until(pattern, *inclusive, *max, bounds).await,
        }
    }

    async fn receive_line(&mut self, bounds: &ReadBounds) -> Result<Vec<u8>, (ReadFail, Vec<u8>)> {
        let without_cr = |mut data: Vec<u8>| {
            data.retain(|&b| b != b'\r');
            data
        };
        let mut scanned = 0;
        loop {
            let unread = self.unread();
            if let Some(at) = unread[scanned..].iter().position(|&b| b == b'\n') {
                let end = scanned + at;
                let line = self.take(end + 1);
                return Ok(without_cr(line[..end].to_vec()));
            }
            scanned = unread.len();
            if scanned > MAX_LINE {
                return Err((ReadFail::LineTooLong, without_cr(self.take_all())));
            }
            match self.fill(bounds).await {
                Ok(true) => {}
                Ok(false) => return Err((ReadFail::Closed, without_cr(self.take_all()))),
                Err(fail) => return Err((fail, without_cr(self.take_all()))),
            }
        }
    }

    async fn receive_all(&mut self, bounds: &ReadBounds) -> Result<Vec<u8>, (ReadFail, Vec<u8>)> {
        loop {
            match self.fill(bounds).await {
                Ok(true) => {}
                Ok(false) => return Ok(self.take_all()),
                Err(fail) => return Err((fail, self.take_all())),
            }
        }
    }

    async fn receive_bytes(
        &mut self,
        n: u64,
        bounds: &ReadBounds,
    ) -> Result<Vec<u8>, (ReadFail, Vec<u8>)> {
        loop {
            let have = self.unread().len();
            if have as u64 >= n {
                // n <= have: it fits in usize.
                return Ok(self.take(n as usize));
            }
            match self.fill(bounds).await {
                Ok(true) => {}
                Ok(false) => return Err((ReadFail::Closed, self.take_all())),
                Err(fail) => return Err((fail, self.take_all())),
            }
        }
    }

    /// Everything up to `pattern` (searched in linear time: a hostile
    /// pattern and stream cannot make the host work more than once per
    /// byte). With `max`, at most that many bytes before the pattern:
    /// `found` is false while it is not reached.
    async fn receive_until(
        &mut self,
        pattern: &[u8],
        inclusive: bool,
        max: Option<u64>,
        bounds: &ReadBounds,
    ) -> Result<(Vec<u8>, bool), (ReadFail, Vec<u8>)> {
        let table = kmp_table(pattern);
        let mut scanned = 0;
        let mut matched = 0;
        loop {
            let unread = self.unread();
            while scanned < unread.len() {
                let byte = unread[scanned];
                while matched > 0 && pattern[matched] != byte {
                    matched = table[matched - 1];
                }
                if pattern[matched] == byte {
                    matched += 1;
                }
                scanned += 1;
                if matched == pattern.len() {
                    let start = scanned - pattern.len();
                    if let Some(max) = max
                        && start as u64 > max
                    {
                        return Ok((self.take(max as usize), false));
                    }
                    let mut data = self.take(scanned);
                    if !inclusive {
                        data.truncate(start);
                    }
                    return Ok((data, true));
                }
            }
            // No match starts before `scanned - matched`.
            if let Some(max) = max
                && (scanned - matched) as u64 >= max
            {
                return Ok((self.take(max as usize), false));
            }
            match self.fill(bounds).await {
                Ok(true) => {}
                Ok(false) => return Err((ReadFail::Closed, self.take_all())),
                Err(fail) => return Err((fail, self.take_all())),
            }
        }
    }

    /// Send all of `data`; `timeout` bounds each wait for the peer.
    pub async fn send(&mut self, data: &[u8], timeout: Duration) -> Result<(), String> {
        let mut sent = 0;
        while sent < data.len() {
            match tokio::time::timeout(timeout, self.stream.write(&data[sent..])).await {
                Err(_) => return Err("timeout".into()),
                Ok(Ok(0)) => return Err("closed".into()),
                Ok(Ok(n)) => sent += n,
                Ok(Err(error)) => return Err(io_message(&error)),
            }
        }
        // TLS: what rustls still holds goes out too.
        match tokio::time::timeout(timeout, self.stream.flush()).await {
            Err(_) => Err("timeout".into()),
            Ok(Err(error)) => Err(io_message(&error)),
            Ok(Ok(())) => Ok(()),
        }
    }
}

/// Knuth-Morris-Pratt: for each prefix of `pattern`, the length of its
/// longest proper prefix that is also its suffix.
fn kmp_table(pattern: &[u8]) -> Vec<usize> {
    let mut table = vec![0; pattern.len()];
    let mut k = 0;
    for i in 1..pattern.len() {
        while k > 0 && pattern[i] != pattern[k] {
            k = table[k - 1];
        }
        if pattern[i] == pattern[k] {
            k += 1;
        }
        table[i] = k;
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kmp() {
        assert_eq!(kmp_table(b"abab"), vec![0, 0, 1, 2]);
        assert_eq!(kmp_table(b"aaab"), vec![0, 1, 2, 0]);
        assert_eq!(kmp_table(b"x"), vec![0]);
    }

    /// A connection whose peer writes `pieces` one by one, then closes.
    async fn dribbled(pieces: Vec<Vec<u8>>) -> Conn {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut peer, _) = listener.accept().await.unwrap();
            for piece in pieces {
                peer.write_all(&piece).await.unwrap();
                peer.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        let place = Place::take(&Arc::default(), 1).unwrap();
        Conn::new(
            Stream::Plain(TcpStream::connect(addr).await.unwrap()),
            0,
            "k".into(),
            place,
            "127.0.0.1".into(),
        )
    }

    fn bounds(max_received: u64) -> ReadBounds {
        ReadBounds {
            received: Arc::new(AtomicU64::new(0)),
            max_received,
            timeout: Duration::from_secs(10),
        }
    }

    fn until(pattern: &[u8], inclusive: bool, max: Option<u64>) -> Pattern {
        Pattern::Until {
            pattern: pattern.to_vec(),
            inclusive,
            max,
        }
    }

    #[tokio::test]
    async fn patterns_across_reads() {
        let pieces = ["l1\r", "\nl", "2\nxx-", "-y", "z--", "b0123", "45--end"];
        let mut conn = dribbled(pieces.iter().map(|p| p.as_bytes().to_vec()).collect()).await;
        let b = bounds(1 << 20);
        let got = |r: Result<(Vec<u8>, bool), (ReadFail, Vec<u8>)>| match r {
            Ok((data, found)) => (String::from_utf8(data).unwrap(), found),
            Err((fail, partial)) => (
                format!("{}:{}", fail.message(), String::from_utf8(partial).unwrap()),
                false,
            ),
        };
        assert_eq!(
            got(conn.receive(&Pattern::Line, &b).await),
            ("l1".into(), true)
        );
        assert_eq!(
            got(conn.receive(&Pattern::Line, &b).await),
            ("l2".into(), true)
        );
        // "--" then "y": a partial match that fails, then the real one.
        let dashes = until(b"--b", false, None);
        assert_eq!(
            got(conn.receive(&dashes, &b).await),
            ("xx--yz".into(), true)
        );
        let sized = until(b"--end", true, Some(4));
        assert_eq!(got(conn.receive(&sized, &b).await), ("0123".into(), false));
        assert_eq!(
            got(conn.receive(&sized, &b).await),
            ("45--end".into(), true)
        );
        assert_eq!(
            got(conn.receive(&Pattern::All, &b).await),
            ("".into(), true)
        );
        assert_eq!(b.received.load(Ordering::Relaxed), 27);
    }

    #[tokio::test]
    async fn the_budget_bounds_what_is_read() {
        let mut conn = dribbled(vec![vec![b'a'; 100], vec![b'b'; 100]]).await;
        let b = bounds(150);
        match conn.receive(&Pattern::All, &b).await {
            Err((ReadFail::Limit(150), partial)) => assert_eq!(partial.len(), 150),
            other => panic!("{other:?}"),
        }
        // Exactly the budget, then the end of the stream: complete.
        let mut conn = dribbled(vec![vec![b'a'; 100]]).await;
        let b = bounds(100);
        match conn.receive(&Pattern::All, &b).await {
            Ok((data, true)) => assert_eq!(data.len(), 100),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_pathological_pattern_is_searched_in_linear_time() {
        // Every position nearly matches: a naive search would compare
        // about 4096 bytes at each of the 4 MiB.
        let mut pattern = vec![b'a'; MAX_PATTERN - 1];
        pattern.push(b'b');
        let mut data = vec![b'a'; 4 << 20];
        data.extend_from_slice(&pattern);
        let mut conn = dribbled(vec![data]).await;
        let b = bounds(8 << 20);
        let (before, found) = conn
            .receive(&until(&pattern, false, None), &b)
            .await
            .unwrap();
        assert!(found);
        assert_eq!(before.len(), 4 << 20);
    }
}
