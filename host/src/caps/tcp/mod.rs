//! `ngx.socket.tcp` (and `resty.http`, pure Lua over it): outbound TCP to
//! the destinations the tenant's policy grants.
//!
//! Every check is made here, whatever the guest's Lua does:
//! - the destination (name or address, and port) must match one of the
//!   policy's `outbound` entries ([`rules::Destination`]);
//! - a name is resolved here, every address it resolves to is checked, and
//!   the connection goes to a checked address (no second resolution that a
//!   rebinding DNS server could answer differently). A non-public address
//!   (loopback, private, link-local, CGNAT, unique-local, documentation,
//!   their IPv4-mapped forms...) is refused unless an `outbound_private`
//!   range holds it, or the script connects to it by the very address an
//!   `outbound` entry names;
//! - per client request, its subrequests included (one [`RequestBudget`]
//!   for the whole tree, [`budget`]): connects (`outbound_max_connections`),
//!   sockets open at once (`outbound_max_sockets`), bytes received from all
//!   connections (`outbound_max_receive_kib`: a huge response is cut with an
//!   error, never buffered); per run, the connect, send and read timeouts (a
//!   script's `settimeout` can only shorten them). Every host buffer is
//!   bounded by the receive budget, lines by [`conn::MAX_LINE`], patterns by
//!   [`conn::MAX_PATTERN`];
//! - per tenant, all its requests together: connections open at once, idle
//!   keepalive connections included (`outbound_max_tenant_sockets`), so that
//!   no tenant takes the descriptors every tenant's clients need;
//! - the keepalive pool is the tenant's and bounded ([`pool`]).
//!
//! I/O runs as operations of the run's table (caps/tasks.rs): a function
//! starts one and returns its id, the guest waits, `finish-*` collects it.
//! The operation's future owns the socket meanwhile (its slot is busy), so
//! two light threads' connections overlap, and their waits count against the
//! request's deadline, not its fuel.
//!
//! TLS (`sslhandshake`, [`tls`]): a connected socket's connection becomes
//! TLS over it (rustls); the certificate is verified against the server's
//! roots unless the script asks not to and the policy grants it
//! (`outbound_tls_no_verify`). The handshake is an operation like the
//! others, bounded by its timeout (the connect timeout's) and the deadline,
//! and paid for with fuel ([`TLS_HANDSHAKE_FUEL`]), as is every byte sent or
//! received through TLS ([`TLS_FUEL_PER_BYTE`]). A TLS connection goes back
//! to the keepalive pool with what it was made for (server name,
//! verification): a connect that takes it from the pool gets it as it is,
//! and a handshake asking for the same skips the handshake; asking for
//! another server name or verification closes it and connects anew.

pub mod budget;
pub mod conn;
pub mod pool;
pub mod rules;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use wasmtime::component::{HasSelf, Linker};

pub use self::budget::RequestBudget;
use self::budget::{Place, TenantSockets};
use self::conn::{Conn, MAX_PATTERN, Pattern, Probe, ReadBounds, Stream, TlsMode};
use self::pool::Pool;
use self::rules::{AddressRange, Destination, OutboundLimits, Target, non_public};
use super::{Grants, RunCaps};
use crate::bindings::moonwall::sandbox::tcp as wit;

/// Most addresses of a resolved name that are checked and tried.
const MAX_ADDRESSES: usize = 64;
/// The longest keepalive pool name.
const MAX_POOL_NAME: usize = 256;
/// Fuel a TLS handshake costs (key exchange, certificate chain and
/// signature checks: about the CPU time of a full handshake, docs/sandbox.md).
pub const TLS_HANDSHAKE_FUEL: u64 = 10_000_000;
/// Fuel a byte sent or received through TLS costs (encryption or
/// decryption).
pub const TLS_FUEL_PER_BYTE: u64 = 8;

/// What a tenant may reach, and its keepalive pool.
#[derive(Default)]
pub struct Grant {
    destinations: Vec<Destination>,
    private: Vec<AddressRange>,
    limits: OutboundLimits,
    pool: Arc<Pool>,
    /// The tenant's connections open at once (kept across reloads: the
    /// connections of requests under the old policy are still open).
    sockets: Arc<TenantSockets>,
    /// `sslhandshake` with `verify = false` is granted.
    tls_no_verify: bool,
    /// The tenant's TLS client configurations.
    tls: tls::TlsClients,
}

impl Grant {
    /// The grant of what the policy's section checked (nothing is parsed
    /// again); the tenant's count of open connections is `previous`'s.
    pub fn from_policy(
        capabilities: &Config,
        previous: Option<&Grant>,
        roots: Arc<tls::TlsRoots>,
    ) -> Grant {
        Grant {
            destinations: (capabilities.outbound.iter())
                .map(|written| written.value.clone())
                .collect(),
            private: (capabilities.outbound_private.iter())
                .map(|written| written.value)
                .collect(),
            limits: capabilities.outbound_limits,
            pool: Arc::new(Pool::default()),
            sockets: previous.map_or_else(Default::default, |p| p.sockets.clone()),
            tls_no_verify: capabilities.outbound_tls_no_verify,
            tls: tls::TlsClients::new(roots),
        }
    }

    /// A place among the tenant's open connections; if they are all taken,
    /// idle keepalive connections are closed (the oldest first) to make
    /// room.
    fn connection_place(&self) -> Result<Place, String> {
        let max = self.limits.max_tenant_sockets;
        loop {
            if let Some(place) = self.sockets.take(max) {
                return Ok(place);
            }
            if !self.pool.close_oldest() {
                return Err(format!(
                    "too many outbound connections open for the tenant (at most {max} at once, all its requests together, idle keepalive connections included; policy [capabilities] outbound_max_tenant_sockets)"
                ));
            }
        }
    }

    /// Whether the connection to `address`, which `target` resolved to (or
    /// is), is granted.
    fn check_address(
        &self,
        target: &Target,
        port: u16,
        address: std::net::IpAddr,
    ) -> Result<(), String> {
        let Some(kind) = non_public(address) else {
            return Ok(());
        };
        if kind.never_granted() {
            return Err(format!(
                "outbound connection to {target}:{port} is refused: {address} is {}, which is never granted",
                kind.describe()
            ));
        }
        let literal = matches!(target, Target::Address(granted) if *granted == address);
        if literal || self.private.iter().any(|range| range.contains(address)) {
            return Ok(());
        }
        Err(format!(
            "outbound connection to {target}:{port} is not granted: {target} resolves to {address}, {} (policy [capabilities] outbound_private)",
            kind.describe()
        ))
    }
}

/// A socket of the run (its place among the request tree's sockets), and
/// its connection if it has one.
struct Socket {
    _place: Place,
    conn: Option<Conn>,
}

enum Slot {
    Ready(Socket),
    /// An operation (this serial number) owns the socket.
    Busy(u64),
}

/// A finished operation: its result, and the socket to give back.
struct Done<T> {
    sock: u32,
    serial: u64,
    socket: Socket,
    result: T,
}

/// Per-run state: the sockets, and what the request tree used.
#[derive(Default)]
pub struct State {
    sockets: HashMap<u32, Slot>,
    last_id: u32,
    serial: u64,
    /// What the client request and all its subrequests used.
    budget: Arc<RequestBudget>,
}

impl State {
    /// The socket of `sock`, ready for an operation; the slot is then busy.
    fn take(&mut self, sock: u32) -> Result<(Socket, u64), String> {
        let slot = self.sockets.get_mut(&sock).ok_or("closed")?;
        if matches!(slot, Slot::Busy(_)) {
            return Err("socket busy".into());
        }
        self.serial += 1;
        let serial = self.serial;
        match std::mem::replace(slot, Slot::Busy(serial)) {
            Slot::Ready(socket) => Ok((socket, serial)),
            Slot::Busy(_) => unreachable!("checked above"),
        }
    }

    /// Give a socket back to its slot, unless the slot was closed (the
    /// socket is then dropped).
    fn give_back(&mut self, sock: u32, serial: u64, socket: Socket) {
        if let Some(slot) = self.sockets.get_mut(&sock)
            && matches!(slot, Slot::Busy(s) if *s == serial)
        {
            *slot = Slot::Ready(socket);
        }
    }

    fn ready(&self, sock: u32) -> Result<&Socket, String> {
        match self.sockets.get(&sock) {
            None => Err("closed".into()),
            Some(Slot::Busy(_)) => Err("socket busy".into()),
            Some(Slot::Ready(socket)) => Ok(socket),
        }
    }
}

/// Where a connect's connection comes from.
enum Origin {
    /// The keepalive pool: the connection, its reuses, its place.
    Pool(Stream, u32, Place),
    /// A new connection, for which this place is taken.
    Connect(Place),
}

/// What a handshake does.
enum Handshake {
    /// The connection is TLS for the same server name and verification
    /// already (from the keepalive pool): nothing.
    Reused,
    /// A handshake over the connection.
    New,
    /// The connection from the pool is TLS for something else: it is
    /// closed, and a new connection made to the same (checked) address,
    /// with this place among the tenant's connections.
    Reconnect(SocketAddr, Place),
}

/// A timeout the guest asked for (none or 0: the policy's), capped by the
/// policy's.
fn timeout(asked: Option<u32>, policy_ms: u64) -> Duration {
    Duration::from_millis(match asked {
        Some(ms) if ms > 0 => u64::from(ms).min(policy_ms),
        _ => policy_ms,
    })
}

/// Resolve `target` (unless it is an address), check every address, and
/// connect to the first checked address that answers.
async fn open_connection(
    grants: Arc<Grants>,
    target: Target,
    port: u16,
    limit: Duration,
) -> Result<TcpStream, String> {
    let work = async {
        let mut addresses: Vec<SocketAddr> = match &target {
            Target::Address(address) => vec![SocketAddr::new(*address, port)],
            Target::Name(name) => tokio::net::lookup_host((name.as_str(), port))
                .await
                .map_err(|_| format!("{name} could not be resolved"))?
                .map(|address| SocketAddr::new(address.ip().to_canonical(), port))
                .take(MAX_ADDRESSES)
                .collect(),
        };
        let mut seen = std::collections::HashSet::new();
        addresses.retain(|address| seen.insert(*address));
        if addresses.is_empty() {
            return Err(format!("{target} could not be resolved"));
        }
        for address in &addresses {
            grants.tcp.check_address(&target, port, address.ip())?;
        }
        let mut last = None;
        for address in addresses {
            match TcpStream::connect(address).await {
                Ok(stream) => return Ok(stream),
                Err(error) => last = Some(error),
            }
        }
        Err(last.map_or_else(|| "connect failed".into(), |e| conn::io_message(&e)))
    };
    match tokio::time::timeout(limit, work).await {
        Err(_) => Err("timeout".into()),
        Ok(result) => result,
    }
}

impl wit::Host for RunCaps {
    async fn open(&mut self) -> wasmtime::Result<Result<u32, String>> {
        let max = self.grants.tcp.limits.max_sockets;
        let Some(place) = Place::take(&self.tcp.budget.sockets, max) else {
            return Ok(Err(format!(
                "too many open sockets (at most {max} per request, its subrequests included; policy [capabilities] outbound_max_sockets)"
            )));
        };
        let mut id = self.tcp.last_id.wrapping_add(1).max(1);
        while self.tcp.sockets.contains_key(&id) {
            id = id.wrapping_add(1).max(1);
        }
        self.tcp.last_id = id;
        let socket = Socket {
            _place: place,
            conn: None,
        };
        self.tcp.sockets.insert(id, Slot::Ready(socket));
        Ok(Ok(id))
    }

    async fn close(&mut self, sock: u32) -> wasmtime::Result<()> {
        self.tcp.sockets.remove(&sock);
        Ok(())
    }

    async fn connect(
        &mut self,
        sock: u32,
        host: Vec<u8>,
        port: u16,
        pool: Option<Vec<u8>>,
        timeout_ms: Option<u32>,
    ) -> wasmtime::Result<Result<u32, String>> {
        if let Err(error) = self.tcp.ready(sock) {
            return Ok(Err(error));
        }
        let target = match Target::parse(&host) {
            Ok(target) => target,
            Err(error) => return Ok(Err(error)),
        };
        if port == 0 {
            return Ok(Err("bad port number: 0".into()));
        }
        let grant = &self.grants.tcp;
        if !grant.destinations.iter().any(|d| target.matches(d, port)) {
            return Ok(Err(format!(
                "outbound connection to {target}:{port} is not granted (policy [capabilities] outbound)"
            )));
        }
        let mut key = format!("{target}:{port}");
        if let Some(pool) = pool {
            if pool.len() > MAX_POOL_NAME {
                return Ok(Err(format!(
                    "pool name too long (at most {MAX_POOL_NAME} bytes)"
                )));
            }
            key.push('/');
            key.push_str(&String::from_utf8_lossy(&pool));
        }
        let max = grant.limits.max_connections;
        if !self.tcp.budget.connect(max) {
            return Ok(Err(format!(
                "too many outbound connections (at most {max} per request, its subrequests included; policy [capabilities] outbound_max_connections)"
            )));
        }
        let limit = timeout(timeout_ms, grant.limits.connect_timeout_ms);
        let (mut socket, serial) = match self.tcp.take(sock) {
            Ok(taken) => taken,
            Err(error) => return Ok(Err(error)),
        };
        // A connection it had is closed first (its place with it).
        socket.conn = None;
        // An idle connection from the pool brings its place among the
        // tenant's connections; a new one takes a place first.
        let grant = &self.grants.tcp;
        let from = match grant.pool.take(&key) {
            Some((stream, reused, place)) => Origin::Pool(stream, reused, place),
            None => match grant.connection_place() {
                Ok(place) => Origin::Connect(place),
                Err(error) => {
                    self.tcp.budget.unconnect();
                    self.tcp.give_back(sock, serial, socket);
                    return Ok(Err(error));
                }
            },
        };
        let grants = self.grants.clone();
        let host = match &target {
            Target::Name(name) => name.clone(),
            Target::Address(address) => address.to_string(),
        };
        let started = self.tcp_start(sock, async move {
            let result = match from {
                Origin::Pool(stream, reused, place) => {
                    socket.conn = Some(Conn::new(stream, reused + 1, key, place, host));
                    Ok(reused + 1)
                }
                Origin::Connect(place) => {
                    match open_connection(grants, target, port, limit).await {
                        Ok(stream) => {
                            let stream = Stream::Plain(stream);
                            socket.conn = Some(Conn::new(stream, 0, key, place, host));
                            Ok(0)
                        }
                        Err(error) => Err(error),
                    }
                }
            };
            Done {
                sock,
                serial,
                socket,
                result,
            }
        });
        Ok(started)
    }

    async fn finish_connect(&mut self, op: u32) -> wasmtime::Result<Result<u32, String>> {
        Ok(self.tcp_finish::<Result<u32, String>>(op).and_then(|r| r))
    }

    async fn send(
        &mut self,
        sock: u32,
        data: Vec<u8>,
        timeout_ms: Option<u32>,
    ) -> wasmtime::Result<Result<u32, String>> {
        match self.tcp.ready(sock) {
            Err(error) => return Ok(Err(error)),
            Ok(Socket { conn: None, .. }) => return Ok(Err("closed".into())),
            Ok(Socket {
                conn: Some(conn), ..
            }) => {
                if conn.stream.tls().is_some() {
                    self.work.charge(crate::sandbox::HostWork::cost(
                        data.len(),
                        TLS_FUEL_PER_BYTE,
                    ))?;
                }
            }
        }
        let limit = timeout(timeout_ms, self.grants.tcp.limits.send_timeout_ms);
        let (mut socket, serial) = match self.tcp.take(sock) {
            Ok(taken) => taken,
            Err(error) => return Ok(Err(error)),
        };
        let started = self.tcp_start(sock, async move {
            let result = match socket.conn.as_mut() {
                None => Err("closed".to_string()),
                Some(conn) => conn.send(&data, limit).await.map(|()| data.len() as u64),
            };
            if result.is_err() {
                socket.conn = None;
            }
            Done {
                sock,
                serial,
                socket,
                result,
            }
        });
        Ok(started)
    }

    async fn finish_send(&mut self, op: u32) -> wasmtime::Result<Result<u64, String>> {
        Ok(self.tcp_finish::<Result<u64, String>>(op).and_then(|r| r))
    }

    async fn receive(
        &mut self,
        sock: u32,
        pattern: wit::ReceivePattern,
        timeout_ms: Option<u32>,
    ) -> wasmtime::Result<Result<u32, String>> {
        let pattern = match pattern {
            wit::ReceivePattern::Line => Pattern::Line,
            wit::ReceivePattern::All => Pattern::All,
            wit::ReceivePattern::Bytes(n) => Pattern::Bytes(n),
            wit::ReceivePattern::Until(delimiter) => {
                if delimiter.pattern.is_empty() {
                    return Ok(Err("pattern is empty".into()));
                }
                if delimiter.pattern.len() > MAX_PATTERN {
                    return Ok(Err(format!(
                        "pattern too long (at most {MAX_PATTERN} bytes)"
                    )));
                }
                if delimiter.max == Some(0) {
                    return Ok(Err("bad size: 0".into()));
                }
                Pattern::Until {
                    pattern: delimiter.pattern,
                    inclusive: delimiter.inclusive,
                    max: delimiter.max,
                }
            }
        };
        match self.tcp.ready(sock) {
            Err(error) => return Ok(Err(error)),
            Ok(socket) if socket.conn.is_none() => return Ok(Err("closed".into())),
            Ok(_) => {}
        }
        let limits = self.grants.tcp.limits;
        let bounds = ReadBounds {
            received: self.tcp.budget.received.clone(),
            max_received: limits.max_receive_kib << 10,
            timeout: timeout(timeout_ms, limits.read_timeout_ms),
        };
        let (mut socket, serial) = match self.tcp.take(sock) {
            Ok(taken) => taken,
            Err(error) => return Ok(Err(error)),
        };
        let started = self.tcp_start(sock, async move {
            let tls = socket
                .conn
                .as_ref()
                .is_some_and(|c| c.stream.tls().is_some());
            let result = match socket.conn.as_mut() {
                None => Err(("closed".to_string(), Vec::new())),
                Some(conn) => match conn.receive(&pattern, &bounds).await {
                    Ok(received) => Ok(received),
                    Err((fail, partial)) => {
                        if !fail.keeps_connection() {
                            socket.conn = None;
                        }
                        Err((fail.message(), partial))
                    }
                },
            };
            Done {
                sock,
                serial,
                socket,
                result: (result, tls),
            }
        });
        Ok(started)
    }

    async fn finish_receive(
        &mut self,
        op: u32,
    ) -> wasmtime::Result<Result<wit::Received, wit::ReceiveError>> {
        type Received = (Result<(Vec<u8>, bool), (String, Vec<u8>)>, bool);
        let result = match self.tcp_finish::<Received>(op) {
            Err(message) => Err(wit::ReceiveError {
                message,
                partial: Vec::new(),
            }),
            Ok((result, tls)) => {
                if tls {
                    // What TLS decrypted for the script.
                    let bytes = match &result {
                        Ok((data, _)) | Err((_, data)) => data.len(),
                    };
                    self.work
                        .charge(crate::sandbox::HostWork::cost(bytes, TLS_FUEL_PER_BYTE))?;
                }
                match result {
                    Ok((data, found)) => Ok(wit::Received { data, found }),
                    Err((message, partial)) => Err(wit::ReceiveError { message, partial }),
                }
            }
        };
        Ok(result)
    }

    async fn set_keepalive(
        &mut self,
        sock: u32,
        timeout_ms: Option<u32>,
        size: Option<u32>,
    ) -> wasmtime::Result<Result<(), String>> {
        let conn = match self.tcp.ready(sock) {
            Err(error) => return Ok(Err(error)),
            Ok(Socket { conn: None, .. }) => return Ok(Err("closed".into())),
            Ok(Socket {
                conn: Some(conn), ..
            }) => conn,
        };
        if conn.has_unread() {
            return Ok(Err("unread data in buffer".into()));
        }
        let Some(Slot::Ready(socket)) = self.tcp.sockets.get_mut(&sock) else {
            return Ok(Err("closed".into()));
        };
        let Some(mut conn) = socket.conn.take() else {
            return Ok(Err("closed".into()));
        };
        let limits = self.grants.tcp.limits;
        let idle = timeout(timeout_ms, limits.keepalive_timeout_ms);
        let total = usize::try_from(limits.keepalive_pool).unwrap_or(usize::MAX);
        let per_key = match size {
            Some(size) if size > 0 => (size as usize).min(total),
            _ => total,
        };
        match conn.stream.probe() {
            // Nothing pending: keep it.
            Probe::Idle => {}
            // The peer closed it: nothing to keep.
            Probe::Closed => return Ok(Ok(())),
            Probe::Data => return Ok(Err("connection in dubious state".into())),
        }
        self.grants.tcp.pool.put(
            conn.key,
            conn.stream,
            conn.reused,
            conn.place,
            tokio::time::Instant::now() + idle,
            per_key,
            total,
        );
        Ok(Ok(()))
    }
    async fn ssl_handshake(
        &mut self,
        sock: u32,
        server_name: Option<Vec<u8>>,
        verify: bool,
        timeout_ms: Option<u32>,
    ) -> wasmtime::Result<Result<u32, String>> {
        let conn = match self.tcp.ready(sock) {
            Err(error) => return Ok(Err(error)),
            Ok(Socket { conn: None, .. }) => return Ok(Err("closed".into())),
            Ok(Socket {
                conn: Some(conn), ..
            }) => conn,
        };
        if conn.handshaken {
            return Ok(Err(
                "sslhandshake was done on this connection already".into()
            ));
        }
        if conn.has_unread() {
            return Ok(Err("unread data in buffer".into()));
        }
        let grant = &self.grants.tcp;
        if !verify && !grant.tls_no_verify {
            return Ok(Err("sslhandshake with verify = false is not granted: the server's certificate must be verified (policy [capabilities] outbound_tls_no_verify)".into()));
        }
        // The name the script gave (checked), else the host it connected to.
        let name = tls::server_name(server_name.as_deref().unwrap_or(conn.host.as_bytes()));
        let name = match name {
            Ok(name) => name,
            Err(error) => return Ok(Err(error)),
        };
        let mode = TlsMode {
            server_name: name.to_str().into_owned(),
            verify,
        };
        let plan = match conn.stream.tls() {
            None => Handshake::New,
            Some(made_for) if *made_for == mode => Handshake::Reused,
            Some(_) => {
                let Ok(address) = conn.stream.tcp().peer_addr() else {
                    return Ok(Err("closed".into()));
                };
                let max = grant.limits.max_connections;
                if !self.tcp.budget.connect(max) {
                    return Ok(Err(format!(
                        "too many outbound connections (at most {max} per request, its subrequests included; policy [capabilities] outbound_max_connections)"
                    )));
                }
                match grant.connection_place() {
                    Ok(place) => Handshake::Reconnect(address, place),
                    Err(error) => {
                        self.tcp.budget.unconnect();
                        return Ok(Err(error));
                    }
                }
            }
        };
        let config = match &plan {
            Handshake::Reused => None,
            _ => match grant.tls.config(verify) {
                Ok(config) => Some(config),
                Err(error) => return Ok(Err(error)),
            },
        };
        if config.is_some() {
            // Host CPU work the script asked for.
            self.work.charge(TLS_HANDSHAKE_FUEL)?;
        }
        let limit = timeout(timeout_ms, grant.limits.connect_timeout_ms);
        let (mut socket, serial) = match self.tcp.take(sock) {
            Ok(taken) => taken,
            Err(error) => return Ok(Err(error)),
        };
        let started = self.tcp_start(sock, async move {
            let result = handshake(&mut socket, plan, config, name, mode, limit).await;
            Done {
                sock,
                serial,
                socket,
                result,
            }
        });
        Ok(started)
    }

    async fn finish_ssl_handshake(&mut self, op: u32) -> wasmtime::Result<Result<u32, String>> {
        Ok(self.tcp_finish::<Result<u32, String>>(op).and_then(|r| r))
    }
}

/// Make `socket`'s connection TLS as `plan` says: how many times the
/// connection was reused before, or why it failed (the connection is then
/// closed).
async fn handshake(
    socket: &mut Socket,
    plan: Handshake,
    config: Option<Arc<rustls::ClientConfig>>,
    name: rustls::pki_types::ServerName<'static>,
    mode: TlsMode,
    limit: Duration,
) -> Result<u32, String> {
    let Some(mut conn) = socket.conn.take() else {
        return Err("closed".into());
    };
    let Some(config) = config else {
        conn.handshaken = true;
        let reused = conn.reused;
        socket.conn = Some(conn);
        return Ok(reused);
    };
    let Conn {
        stream,
        mut reused,
        key,
        mut place,
        host,
        ..
    } = conn;
    let work = async {
        let tcp = match (plan, stream) {
            (Handshake::Reconnect(address, new_place), old) => {
                drop(old);
                place = new_place;
                reused = 0;
                TcpStream::connect(address)
                    .await
                    .map_err(|error| conn::io_message(&error))?
            }
            (_, Stream::Plain(tcp)) => tcp,
            (_, Stream::Tls(..)) => return Err("the connection is TLS already".to_string()),
        };
        let connector = tokio_rustls::TlsConnector::from(config);
        connector
            .connect(name, tcp)
            .await
            .map_err(|error| tls::handshake_error(&error))
    };
    match tokio::time::timeout(limit, work).await {
        Err(_) => Err("handshake timed out".into()),
        Ok(Err(error)) => Err(error),
        Ok(Ok(tls)) => {
            let stream = Stream::Tls(Box::new(tls), mode);
            let mut conn = Conn::new(stream, reused, key, place, host);
            conn.handshaken = true;
            socket.conn = Some(conn);
            Ok(reused)
        }
    }
}

impl RunCaps {
    /// Start `future` as an operation of the run; if the table is full, the
    /// socket it owns is closed.
    fn tcp_start<T: Send + 'static>(
        &mut self,
        sock: u32,
        future: impl Future<Output = Done<T>> + Send + 'static,
    ) -> Result<u32, String> {
        let started = self.tasks.ops.start(future);
        if started.is_err() {
            self.tcp.sockets.remove(&sock);
        }
        started
    }

    /// Collect operation `op`, giving its socket back.
    fn tcp_finish<T: 'static>(&mut self, op: u32) -> Result<T, String> {
        let done = self.tasks.ops.finish::<Done<T>>(op)?;
        self.tcp.give_back(done.sock, done.serial, done.socket);
        Ok(done.result)
    }
}

/// The outbound capability's keys of a policy's `[capabilities]`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Section {
    /// Destinations, `scheme://host[:port]`.
    outbound: Option<Vec<toml::Spanned<String>>>,
    /// Non-public addresses or ranges names may resolve to.
    outbound_private: Option<Vec<toml::Spanned<String>>>,
    outbound_max_connections: Option<toml::Spanned<u64>>,
    outbound_max_sockets: Option<toml::Spanned<u64>>,
    outbound_max_receive_kib: Option<toml::Spanned<u64>>,
    outbound_connect_timeout_ms: Option<toml::Spanned<u64>>,
    outbound_send_timeout_ms: Option<toml::Spanned<u64>>,
    outbound_read_timeout_ms: Option<toml::Spanned<u64>>,
    outbound_keepalive_pool: Option<toml::Spanned<u64>>,
    outbound_keepalive_timeout_ms: Option<toml::Spanned<u64>>,
    outbound_max_tenant_sockets: Option<toml::Spanned<u64>>,
    /// `sslhandshake` may skip verifying the certificate (`verify = false`).
    outbound_tls_no_verify: Option<toml::Spanned<bool>>,
}

/// What a policy's outbound section checked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    /// Outbound destinations, `scheme://host[:port]` (host may be `*.name`).
    pub outbound: Vec<super::policy::Written<Destination>>,
    /// Non-public addresses outbound connections may reach (`addr[/bits]`).
    pub outbound_private: Vec<super::policy::Written<AddressRange>>,
    /// Bounds on outbound connections: per client request, the keepalive
    /// pool's, the tenant's.
    pub outbound_limits: OutboundLimits,
    /// `sslhandshake` may skip verifying the server's certificate.
    pub outbound_tls_no_verify: bool,
}

impl super::policy::PolicySection for Section {
    type Config = Config;

    fn apply(self, cx: &mut super::policy::PolicyContext) -> Config {
        use super::policy::Written;
        let mut capabilities = Config::default();
        for destination in self.outbound.iter().flatten() {
            match Destination::parse(destination.get_ref()) {
                Ok(value) => capabilities.outbound.push(Written {
                    text: destination.get_ref().clone(),
                    value,
                }),
                Err(message) => cx.problems.at(destination.span(), message),
            }
        }
        for range in self.outbound_private.iter().flatten() {
            match AddressRange::parse(range.get_ref()) {
                Ok(value) => capabilities.outbound_private.push(Written {
                    text: range.get_ref().clone(),
                    value,
                }),
                Err(message) => cx.problems.at(range.span(), message),
            }
        }
        use rules::OutboundLimit as L;
        let limits = [
            (L::MaxConnections, &self.outbound_max_connections),
            (L::MaxSockets, &self.outbound_max_sockets),
            (L::MaxReceiveKib, &self.outbound_max_receive_kib),
            (L::ConnectTimeoutMs, &self.outbound_connect_timeout_ms),
            (L::SendTimeoutMs, &self.outbound_send_timeout_ms),
            (L::ReadTimeoutMs, &self.outbound_read_timeout_ms),
            (L::KeepalivePool, &self.outbound_keepalive_pool),
            (L::KeepaliveTimeoutMs, &self.outbound_keepalive_timeout_ms),
            (L::MaxTenantSockets, &self.outbound_max_tenant_sockets),
        ];
        for (limit, value) in limits {
            let Some(value) = value else { continue };
            match limit.def().check(*value.get_ref()) {
                Ok(checked) => *capabilities.outbound_limits.slot(limit) = checked,
                Err(message) => cx.problems.at(value.span(), message),
            }
        }
        if let Some(no_verify) = &self.outbound_tls_no_verify {
            capabilities.outbound_tls_no_verify = *no_verify.get_ref();
        }
        capabilities
    }
}

/// The capability: outbound TCP, and HTTP over it.
pub struct Outbound;

impl super::Capability for Outbound {
    type Section = Section;
    type Config = Config;
    type Grant = Grant;
    type State = State;

    fn grant(
        _: &str,
        config: &Config,
        previous: Option<&Grant>,
        settings: &super::CapsSettings,
    ) -> Result<Grant, String> {
        Ok(Grant::from_policy(
            config,
            previous,
            settings.tls_roots.clone(),
        ))
    }

    fn state(request: &super::RequestCaps) -> State {
        State {
            budget: request.outbound.clone(),
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
