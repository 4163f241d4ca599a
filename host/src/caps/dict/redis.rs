//! Shared dicts on a Redis server, for several moonwall nodes sharing state
//! (`shared_dicts_backend = "redis://host:port/db"` in the server config).
//!
//! Every operation is one Lua script run atomically by Redis ([`SCRIPT`],
//! by `EVALSHA`), so the accounting of sizes, expiry, LRU eviction, `incr`
//! and lists keep OpenResty's semantics across nodes. Time is Redis's own
//! (`TIME`), so nodes agree on expiry.
//!
//! The client is a small RESP2 client of our own over tokio TCP rather than
//! the `redis` crate: it needs five commands, and owning the parser lets
//! every reply be bounded before anything is allocated for it (a value is
//! at most the dict's size; a list of keys at most what the dict can hold).
//! Connections are pooled (at most [`MAX_CONNECTIONS`] at once); every call
//! is bounded by the backend's timeout and by the run's deadline, and a
//! connection whose call did not end cleanly is dropped.
//!
//! Layout of a dict in Redis, under the prefix `moonwall:{TENANT/DICT}:`
//! (the hash tag keeps a dict in one cluster slot):
//! `t` hash key -> "type:flags:cost"; `d` hash key -> the value's bytes;
//! `e` sorted set of expiry times (ms); `u` sorted set of last uses (LRU);
//! `w` sorted set of write sequence numbers (entries written before the
//! `flush` mark of `m` are flushed); `m` hash of `used`, `clock`, `seq`,
//! `flush`; `l` + key: the list of a list entry (each element its type
//! letter and bytes).

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;

use super::{
    DictFuture, ENTRY_OVERHEAD, EXISTS, Error, INTEGER_OVERFLOW, IS_A_LIST, Item,
    LIST_ITEM_OVERHEAD, Mode, NIL_ADD, NO_MEMORY, NOT_A_LIST, NOT_A_NUMBER, NOT_FOUND, Store,
    Value, add_numbers,
};

/// Most connections open to the server at once (callers beyond wait).
pub const MAX_CONNECTIONS: usize = 64;
/// Most idle connections kept for reuse.
const MAX_IDLE: usize = 16;
/// How long a call may take by default (`?timeout_ms=` in the URL).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest `timeout_ms` accepted.
const MAX_TIMEOUT_MS: u64 = 60_000;
/// The longest line of a reply (a status or error message).
const MAX_LINE: usize = 64 << 10;
/// What a reply may hold beyond the dict's size (headers, small values).
const REPLY_SLACK: u64 = 64 << 10;

/// Where the Redis server is, as `shared_dicts_backend` says.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    pub host: String,
    pub port: u16,
    pub db: u32,
    pub user: Option<String>,
    pub password: Option<String>,
    pub timeout: Duration,
}

/// The URL, its password hidden.
impl fmt::Display for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "redis://")?;
        match (&self.user, &self.password) {
            (Some(user), _) => write!(f, "{user}:***@")?,
            (None, Some(_)) => write!(f, ":***@")?,
            (None, None) => {}
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}/{}", self.host, self.port, self.db)
        } else {
            write!(f, "{}:{}/{}", self.host, self.port, self.db)
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `%XX` escapes in the user and password of a URL.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl RedisConfig {
    /// `redis://[[user]:password@]host[:port][/db][?timeout_ms=N]`.
    pub fn parse(text: &str) -> Result<RedisConfig, String> {
        let bad =
            |why: &str| format!("shared_dicts_backend: {why} (like \"redis://127.0.0.1:6379/0\")");
        let rest = text
            .strip_prefix("redis://")
            .ok_or_else(|| bad("a Redis backend is a redis:// URL"))?;
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query)),
            None => (rest, None),
        };
        let (authority, db) = match rest.split_once('/') {
            Some((authority, db)) => (authority, db),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(userinfo) => {
                let Some((user, password)) = userinfo.split_once(':') else {
                    return Err(bad("give a password as user:password@ or :password@"));
                };
                let user = percent_decode(user).ok_or_else(|| bad("bad %-escape in the user"))?;
                let password =
                    percent_decode(password).ok_or_else(|| bad("bad %-escape in the password"))?;
                if password.is_empty() {
                    return Err(bad("the password is empty"));
                }
                ((!user.is_empty()).then_some(user), Some(password))
            }
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("an IPv6 address needs its closing ]"))?;
            let port = match after {
                "" => None,
                _ => Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| bad("a port follows the address after a colon"))?,
                ),
            };
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad(&format!("`{host}` is not an IPv6 address")));
            }
            (host.to_string(), port)
        } else {
            match hostport.split_once(':') {
                Some((host, port)) => (host.to_string(), Some(port)),
                None => (hostport.to_string(), None),
            }
        };
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b))
        {
            return Err(bad(&format!(
                "`{}` is not a host name",
                host.escape_debug()
            )));
        }
        let port = match port {
            None => 6379,
            Some(port) => match port.parse::<u16>() {
                Ok(port) if port > 0 => port,
                _ => return Err(bad(&format!("`{}` is not a port", port.escape_debug()))),
            },
        };
        let db = match db {
            "" => 0,
            db => db
                .parse::<u32>()
                .map_err(|_| bad(&format!("`{}` is not a database number", db.escape_debug())))?,
        };
        let mut timeout = DEFAULT_TIMEOUT;
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            match pair.split_once('=') {
                Some(("timeout_ms", ms)) => match ms.parse::<u64>() {
                    Ok(ms) if (1..=MAX_TIMEOUT_MS).contains(&ms) => {
                        timeout = Duration::from_millis(ms)
                    }
                    _ => {
                        return Err(bad(&format!(
                            "timeout_ms `{}` is not a number of milliseconds from 1 to {MAX_TIMEOUT_MS}",
                            ms.escape_debug()
                        )));
                    }
                },
                _ => {
                    return Err(bad(&format!(
                        "unknown parameter `{}` (only timeout_ms)",
                        pair.escape_debug()
                    )));
                }
            }
        }
        Ok(RedisConfig {
            host,
            port,
            db,
            user,
            password,
            timeout,
        })
    }
}

/// The server's Redis client: shared by every tenant's dicts.
#[derive(Clone)]
pub struct Backend(Arc<Client>);

impl PartialEq for Backend {
    fn eq(&self, other: &Backend) -> bool {
        self.0.config == other.0.config
    }
}

impl Eq for Backend {}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redis({})", self.0.config)
    }
}

impl Backend {
    /// A client for the server at `url` (nothing is connected yet).
    pub fn parse(url: &str) -> Result<Backend, String> {
        Ok(Backend::new(RedisConfig::parse(url)?))
    }

    pub fn new(config: RedisConfig) -> Backend {
        use sha1::Digest;
        let sha: String = sha1::Sha1::digest(SCRIPT.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Backend(Arc::new(Client {
            config,
            idle: Mutex::new(Vec::new()),
            slots: tokio::sync::Semaphore::new(MAX_CONNECTIONS),
            script_sha: sha,
        }))
    }

    pub fn config(&self) -> &RedisConfig {
        &self.0.config
    }

    /// The dict `name` of `tenant`, of `capacity` bytes.
    pub fn dict(&self, tenant: &str, name: &str, capacity: u64) -> RedisDict {
        RedisDict {
            client: self.0.clone(),
            prefix: format!("moonwall:{{{tenant}/{name}}}:").into_bytes(),
            capacity,
        }
    }
}

/// A connection pool and the script's digest.
pub struct Client {
    config: RedisConfig,
    idle: Mutex<Vec<Connection>>,
    slots: tokio::sync::Semaphore,
    script_sha: String,
}

/// Bounds on one reply.
#[derive(Clone, Copy)]
struct Budget {
    bytes: u64,
    items: usize,
}

#[derive(Debug)]
enum Reply {
    Nil,
    Int(i64),
    Bytes(Vec<u8>),
    Status,
    Error(String),
    Array(Vec<Reply>),
}

fn protocol(why: impl fmt::Display) -> Error {
    Error::Backend(format!("bad reply from Redis: {why}"))
}

fn io_error(error: std::io::Error) -> Error {
    Error::Backend(format!("Redis connection: {error}"))
}

struct Connection {
    stream: BufStream<TcpStream>,
}

impl Connection {
    async fn open(config: &RedisConfig) -> Result<Connection, Error> {
        let stream = TcpStream::connect((config.host.as_str(), config.port))
            .await
            .map_err(|error| Error::Backend(format!("cannot connect to {config}: {error}")))?;
        let _ = stream.set_nodelay(true);
        let mut connection = Connection {
            stream: BufStream::new(stream),
        };
        let small = Budget {
            bytes: REPLY_SLACK,
            items: 16,
        };
        if let Some(password) = &config.password {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(user) = &config.user {
                args.push(user.as_bytes());
            }
            args.push(password.as_bytes());
            match connection.command(&args, small).await? {
                Reply::Status => {}
                Reply::Error(message) => {
                    return Err(Error::Backend(format!(
                        "{config} refused the password: {message}"
                    )));
                }
                other => return Err(protocol(format!("to AUTH: {other:?}"))),
            }
        }
        if config.db != 0 {
            let db = config.db.to_string();
            match connection
                .command(&[b"SELECT", db.as_bytes()], small)
                .await?
            {
                Reply::Status => {}
                Reply::Error(message) => {
                    return Err(Error::Backend(format!(
                        "{config}: cannot select database {}: {message}",
                        config.db
                    )));
                }
                other => return Err(protocol(format!("to SELECT: {other:?}"))),
            }
        }
        Ok(connection)
    }

    async fn command(&mut self, args: &[&[u8]], budget: Budget) -> Result<Reply, Error> {
        let mut head = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            head.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            if arg.len() <= 4096 {
                head.extend_from_slice(arg);
                head.extend_from_slice(b"\r\n");
            } else {
                self.stream.write_all(&head).await.map_err(io_error)?;
                head.clear();
                self.stream.write_all(arg).await.map_err(io_error)?;
                head.extend_from_slice(b"\r\n");
            }
        }
        self.stream.write_all(&head).await.map_err(io_error)?;
        self.stream.flush().await.map_err(io_error)?;
        self.read_reply(budget).await
    }

    /// One line, without its CRLF, of at most [`MAX_LINE`] bytes.
    async fn read_line(&mut self) -> Result<Vec<u8>, Error> {
        let mut line = Vec::new();
        loop {
            let (done, used) = {
                let buffer = self.stream.fill_buf().await.map_err(io_error)?;
                if buffer.is_empty() {
                    return Err(Error::Backend("Redis closed the connection".into()));
                }
                match buffer.iter().position(|b| *b == b'\n') {
                    Some(end) => {
                        line.extend_from_slice(&buffer[..end]);
                        (true, end + 1)
                    }
                    None => {
                        line.extend_from_slice(buffer);
                        (false, buffer.len())
                    }
                }
            };
            self.stream.consume(used);
            if line.len() > MAX_LINE {
                return Err(protocol("a line too long"));
            }
            if done {
                if line.pop() != Some(b'\r') {
                    return Err(protocol("a line not ended by CRLF"));
                }
                return Ok(line);
            }
        }
    }

    fn number(text: &[u8]) -> Result<i64, Error> {
        std::str::from_utf8(text)
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| protocol("a bad number"))
    }

    /// A reply: a scalar, or an array of scalars, within `budget`.
    async fn read_reply(&mut self, budget: Budget) -> Result<Reply, Error> {
        let line = self.read_line().await?;
        if line.first() != Some(&b'*') {
            let mut bytes_left = budget.bytes;
            return self.read_scalar(line, &mut bytes_left).await;
        }
        let count = Self::number(&line[1..])?;
        if count < 0 {
            return Ok(Reply::Nil);
        }
        if count as u64 > budget.items as u64 {
            return Err(protocol(format!(
                "{count} items, more than the dict can hold"
            )));
        }
        let mut bytes_left = budget.bytes;
        let mut items = Vec::with_capacity((count as usize).min(1024));
        for _ in 0..count {
            let line = self.read_line().await?;
            if line.first() == Some(&b'*') {
                return Err(protocol("a nested array"));
            }
            items.push(self.read_scalar(line, &mut bytes_left).await?);
        }
        Ok(Reply::Array(items))
    }

    async fn read_scalar(&mut self, line: Vec<u8>, bytes_left: &mut u64) -> Result<Reply, Error> {
        let Some((&kind, rest)) = line.split_first() else {
            return Err(protocol("an empty line"));
        };
        match kind {
            b'+' => Ok(Reply::Status),
            b'-' => Ok(Reply::Error(String::from_utf8_lossy(rest).into_owned())),
            b':' => Ok(Reply::Int(Self::number(rest)?)),
            b'$' => {
                let len = Self::number(rest)?;
                if len < 0 {
                    return Ok(Reply::Nil);
                }
                let len = len as u64;
                if len > *bytes_left {
                    return Err(protocol(format!(
                        "a value of {len} bytes, more than the dict can hold"
                    )));
                }
                *bytes_left -= len;
                // Grown as the bytes arrive, not reserved on the server's word.
                let mut data = Vec::with_capacity((len as usize).min(1 << 20));
                (&mut self.stream)
                    .take(len)
                    .read_to_end(&mut data)
                    .await
                    .map_err(io_error)?;
                if data.len() as u64 != len {
                    return Err(Error::Backend("Redis closed the connection".into()));
                }
                let mut crlf = [0u8; 2];
                self.stream.read_exact(&mut crlf).await.map_err(io_error)?;
                if crlf != *b"\r\n" {
                    return Err(protocol("a value not ended by CRLF"));
                }
                Ok(Reply::Bytes(data))
            }
            _ => Err(protocol(format!("unknown reply type {:?}", kind as char))),
        }
    }
}

impl Client {
    /// Run the script with `args`, bounded by the timeout and `deadline`.
    async fn eval(
        &self,
        args: &[&[u8]],
        budget: Budget,
        deadline: Instant,
    ) -> Result<Reply, Error> {
        let timeout_at = Instant::now() + self.config.timeout;
        let limit = timeout_at.min(deadline);
        match tokio::time::timeout_at(limit.into(), self.eval_now(args, budget)).await {
            Ok(result) => result,
            Err(_) if limit == deadline => Err(Error::Deadline),
            Err(_) => Err(Error::Backend(format!(
                "no answer from {} within {} ms",
                self.config,
                self.config.timeout.as_millis()
            ))),
        }
    }

    async fn eval_now(&self, args: &[&[u8]], budget: Budget) -> Result<Reply, Error> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| Error::Backend("the Redis client is closed".into()))?;
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop();
        let mut connection = match idle {
            Some(connection) => connection,
            None => Connection::open(&self.config).await?,
        };
        let mut command: Vec<&[u8]> = Vec::with_capacity(args.len() + 3);
        command.extend_from_slice(&[b"EVALSHA", self.script_sha.as_bytes(), b"1"]);
        command.extend_from_slice(args);
        let mut reply = connection.command(&command, budget).await?;
        if matches!(&reply, Reply::Error(message) if message.starts_with("NOSCRIPT")) {
            command[0] = b"EVAL";
            command[1] = SCRIPT.as_bytes();
            reply = connection.command(&command, budget).await?;
        }
        // The exchange ended cleanly: the connection can serve again.
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(connection);
        }
        drop(idle);
        match reply {
            Reply::Error(message) => Err(Error::Backend(format!(
                "Redis error: {}",
                message.chars().take(300).collect::<String>()
            ))),
            reply => Ok(reply),
        }
    }
}

/// One dict on the Redis server.
pub struct RedisDict {
    client: Arc<Client>,
    prefix: Vec<u8>,
    capacity: u64,
}

/// A refusal of the script: the message back as one of ours.
fn refusal(message: &[u8]) -> Error {
    const KNOWN: &[&str] = &[
        EXISTS,
        NOT_FOUND,
        NO_MEMORY,
        NOT_A_NUMBER,
        NOT_A_LIST,
        IS_A_LIST,
        INTEGER_OVERFLOW,
    ];
    match KNOWN.iter().find(|known| known.as_bytes() == message) {
        Some(known) => Error::Refused(known),
        None => protocol(format!(
            "unknown refusal {:?}",
            String::from_utf8_lossy(&message[..message.len().min(100)])
        )),
    }
}

/// A value as the script stores it: its type letter and bytes.
fn encode(value: &Value) -> (&'static [u8], Vec<u8>) {
    match value {
        Value::Str(bytes) => (b"s", bytes.to_vec()),
        Value::Int(n) => (b"i", n.to_string().into_bytes()),
        Value::Float(x) => (b"f", format!("{x:?}").into_bytes()),
        Value::Bool(b) => (b"b", if *b { b"1".to_vec() } else { b"0".to_vec() }),
    }
}

/// A float as Lua's `%.17g` or Rust's `{:?}` wrote it.
fn parse_float(text: &str) -> Option<f64> {
    match text
        .trim_start_matches(['-', '+'])
        .to_ascii_lowercase()
        .as_str()
    {
        "nan" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

fn decode(kind: &[u8], data: Vec<u8>) -> Result<Value, Error> {
    let text = || std::str::from_utf8(&data).map_err(|_| protocol("a number that is not text"));
    match kind {
        b"s" => Ok(Value::Str(Bytes::from(data))),
        b"i" => text()?
            .parse()
            .map(Value::Int)
            .map_err(|_| protocol("a bad integer")),
        b"f" => parse_float(text()?)
            .map(Value::Float)
            .ok_or_else(|| protocol("a bad float")),
        b"b" => Ok(Value::Bool(data == b"1")),
        _ => Err(protocol("an unknown value type")),
    }
}

/// The parts of the script's answer `{0, ...}`, or its refusal `{1, message}`.
fn answer(reply: Reply) -> Result<Vec<Reply>, Error> {
    let Reply::Array(mut items) = reply else {
        return Err(protocol(format!("{reply:?}")));
    };
    if items.is_empty() {
        return Err(protocol("an empty answer"));
    }
    match items.remove(0) {
        Reply::Int(0) => Ok(items),
        Reply::Int(1) => match items.into_iter().next() {
            Some(Reply::Bytes(message)) => Err(refusal(&message)),
            _ => Err(protocol("a refusal without its message")),
        },
        other => Err(protocol(format!("{other:?}"))),
    }
}

fn int(reply: Option<Reply>) -> Result<i64, Error> {
    match reply {
        Some(Reply::Int(n)) => Ok(n),
        other => Err(protocol(format!("{other:?} for a number"))),
    }
}

fn bytes(reply: Option<Reply>) -> Result<Vec<u8>, Error> {
    match reply {
        Some(Reply::Bytes(data)) => Ok(data),
        other => Err(protocol(format!("{other:?} for bytes"))),
    }
}

fn flag(reply: Option<Reply>) -> Result<bool, Error> {
    Ok(int(reply)? != 0)
}

impl RedisDict {
    /// Run operation `op` with `args` on this dict; the answer's parts.
    async fn call(&self, op: &str, args: &[&[u8]], deadline: Instant) -> Result<Vec<Reply>, Error> {
        let capacity = self.capacity.to_string();
        let overhead = ENTRY_OVERHEAD.to_string();
        let item_overhead = LIST_ITEM_OVERHEAD.to_string();
        let mut all: Vec<&[u8]> = vec![
            &self.prefix,
            op.as_bytes(),
            capacity.as_bytes(),
            overhead.as_bytes(),
            item_overhead.as_bytes(),
        ];
        all.extend_from_slice(args);
        let budget = Budget {
            bytes: self.capacity + REPLY_SLACK,
            items: (self.capacity / ENTRY_OVERHEAD) as usize + 8,
        };
        answer(self.client.eval(&all, budget, deadline).await?)
    }
}

fn boxed<'a, T: Send + 'a>(
    future: impl std::future::Future<Output = Result<T, Error>> + Send + 'a,
) -> DictFuture<'a, T> {
    Box::pin(future)
}

impl Store for RedisDict {
    fn free_space(&self, deadline: Instant) -> DictFuture<'_, u64> {
        boxed(async move {
            let mut parts = self.call("free_space", &[], deadline).await?.into_iter();
            Ok(int(parts.next())?.max(0) as u64)
        })
    }

    fn get(&self, key: Vec<u8>, stale: bool, deadline: Instant) -> DictFuture<'_, Option<Item>> {
        boxed(async move {
            let stale_arg: &[u8] = if stale { b"1" } else { b"0" };
            let mut parts = self
                .call("get", &[&key, stale_arg], deadline)
                .await?
                .into_iter();
            let Some(kind) = parts.next() else {
                return Ok(None);
            };
            let kind = bytes(Some(kind))?;
            let value = decode(&kind, bytes(parts.next())?)?;
            let flags = u32::try_from(int(parts.next())?).map_err(|_| protocol("bad flags"))?;
            let stale = flag(parts.next())?;
            Ok(Some(Item {
                value,
                flags,
                stale,
            }))
        })
    }

    fn store(
        &self,
        key: Vec<u8>,
        value: Option<Value>,
        ttl_ms: u64,
        flags: u32,
        mode: Mode,
        deadline: Instant,
    ) -> DictFuture<'_, bool> {
        boxed(async move {
            if value.is_none() && matches!(mode, Mode::Add | Mode::SafeAdd | Mode::Replace) {
                return Err(Error::Refused(NIL_ADD));
            }
            let mode: &[u8] = match mode {
                Mode::Set => b"set",
                Mode::SafeSet => b"safe_set",
                Mode::Add => b"add",
                Mode::SafeAdd => b"safe_add",
                Mode::Replace => b"replace",
            };
            let (kind, data) = match &value {
                Some(value) => encode(value),
                None => (&b""[..], Vec::new()),
            };
            let ttl = ttl_ms.to_string();
            let flags = flags.to_string();
            let mut parts = self
                .call(
                    "store",
                    &[&key, mode, kind, &data, ttl.as_bytes(), flags.as_bytes()],
                    deadline,
                )
                .await?
                .into_iter();
            flag(parts.next())
        })
    }

    fn incr(
        &self,
        key: Vec<u8>,
        delta: Value,
        init: Option<Value>,
        init_ttl_ms: u64,
        deadline: Instant,
    ) -> DictFuture<'_, (Value, bool)> {
        boxed(async move {
            let (delta_kind, delta_data) = encode(&delta);
            // A missing key starts at init + delta, computed here exactly.
            let start = init.map(|init| add_numbers(&init, &delta)).transpose()?;
            let (start_kind, start_data) = match &start {
                Some(start) => encode(start),
                None => (&b""[..], Vec::new()),
            };
            let ttl = init_ttl_ms.to_string();
            let mut parts = self
                .call(
                    "incr",
                    &[
                        &key,
                        delta_kind,
                        &delta_data,
                        start_kind,
                        &start_data,
                        ttl.as_bytes(),
                    ],
                    deadline,
                )
                .await?
                .into_iter();
            let kind = bytes(parts.next())?;
            let value = decode(&kind, bytes(parts.next())?)?;
            if !matches!(value, Value::Int(_) | Value::Float(_)) {
                return Err(protocol("incr gave a value that is not a number"));
            }
            Ok((value, flag(parts.next())?))
        })
    }

    fn ttl(&self, key: Vec<u8>, deadline: Instant) -> DictFuture<'_, u64> {
        boxed(async move {
            let mut parts = self.call("ttl", &[&key], deadline).await?.into_iter();
            Ok(int(parts.next())?.max(0) as u64)
        })
    }

    fn expire(&self, key: Vec<u8>, ttl_ms: u64, deadline: Instant) -> DictFuture<'_, ()> {
        boxed(async move {
            let ttl = ttl_ms.to_string();
            self.call("expire", &[&key, ttl.as_bytes()], deadline)
                .await?;
            Ok(())
        })
    }

    fn flush_all(&self, deadline: Instant) -> DictFuture<'_, ()> {
        boxed(async move {
            self.call("flush_all", &[], deadline).await?;
            Ok(())
        })
    }

    fn flush_expired(&self, max: u32, deadline: Instant) -> DictFuture<'_, u32> {
        boxed(async move {
            let max = max.to_string();
            let mut parts = self
                .call("flush_expired", &[max.as_bytes()], deadline)
                .await?
                .into_iter();
            u32::try_from(int(parts.next())?).map_err(|_| protocol("a bad count"))
        })
    }

    fn get_keys(&self, max: u32, deadline: Instant) -> DictFuture<'_, Vec<Vec<u8>>> {
        boxed(async move {
            let max = max.to_string();
            self.call("get_keys", &[max.as_bytes()], deadline)
                .await?
                .into_iter()
                .map(|key| bytes(Some(key)))
                .collect()
        })
    }

    fn push(
        &self,
        key: Vec<u8>,
        value: Value,
        front: bool,
        deadline: Instant,
    ) -> DictFuture<'_, u64> {
        boxed(async move {
            let (kind, data) = encode(&value);
            let mut item = Vec::with_capacity(1 + data.len());
            item.extend_from_slice(kind);
            item.extend_from_slice(&data);
            let front: &[u8] = if front { b"1" } else { b"0" };
            let mut parts = self
                .call("push", &[&key, front, &item], deadline)
                .await?
                .into_iter();
            Ok(int(parts.next())?.max(0) as u64)
        })
    }

    fn pop(&self, key: Vec<u8>, front: bool, deadline: Instant) -> DictFuture<'_, Option<Value>> {
        boxed(async move {
            let front: &[u8] = if front { b"1" } else { b"0" };
            let mut parts = self
                .call("pop", &[&key, front], deadline)
                .await?
                .into_iter();
            let Some(kind) = parts.next() else {
                return Ok(None);
            };
            let kind = bytes(Some(kind))?;
            Ok(Some(decode(&kind, bytes(parts.next())?)?))
        })
    }

    fn llen(&self, key: Vec<u8>, deadline: Instant) -> DictFuture<'_, u64> {
        boxed(async move {
            let mut parts = self.call("llen", &[&key], deadline).await?.into_iter();
            Ok(int(parts.next())?.max(0) as u64)
        })
    }
}

/// The one script behind every operation. KEYS[1] is the dict's prefix;
/// ARGV: the operation, the dict's size, [`ENTRY_OVERHEAD`],
/// [`LIST_ITEM_OVERHEAD`], then the operation's arguments. It answers
/// `{0, ...}`, or `{1, message}` for OpenResty's refusals.
pub const SCRIPT: &str = r#"
local P = KEYS[1]
local op = ARGV[1]
local cap = tonumber(ARGV[2])
local OVERHEAD = tonumber(ARGV[3])
local ITEM = tonumber(ARGV[4])
local KT, KD, KE, KU, KW, KM = P .. 't', P .. 'd', P .. 'e', P .. 'u', P .. 'w', P .. 'm'
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local flushed_below = tonumber(redis.call('HGET', KM, 'flush') or 0)

local function list_key(k) return P .. 'l' .. k end

local function header(k)
  local h = redis.call('HGET', KT, k)
  if not h then return nil end
  local typ, flags, cost = string.match(h, '^(%a):(%d+):(%d+)$')
  if not typ then return nil end
  return { typ = typ, flags = flags, cost = tonumber(cost) }
end

local function is_expired(k)
  local e = redis.call('ZSCORE', KE, k)
  if e and tonumber(e) <= now then return true end
  local w = redis.call('ZSCORE', KW, k)
  return (not w) or tonumber(w) < flushed_below
end

local function remove(k, h)
  redis.call('HDEL', KT, k)
  redis.call('HDEL', KD, k)
  redis.call('ZREM', KE, k)
  redis.call('ZREM', KU, k)
  redis.call('ZREM', KW, k)
  if not h or h.typ == 'l' then redis.call('DEL', list_key(k)) end
  if h then redis.call('HINCRBY', KM, 'used', -h.cost) end
end

local function used() return tonumber(redis.call('HGET', KM, 'used') or 0) end
local function touch(k) redis.call('ZADD', KU, redis.call('HINCRBY', KM, 'clock', 1), k) end
local function rewrite(k) redis.call('ZADD', KW, redis.call('HINCRBY', KM, 'seq', 1), k) end

local function set_expiry(k, ttl)
  if ttl > 0 then redis.call('ZADD', KE, now + ttl, k) else redis.call('ZREM', KE, k) end
end

local function size_of(typ, data)
  if typ == 's' then return #data elseif typ == 'b' then return 1 end
  return 8
end
local function entry_cost(k, size) return #k + size + OVERHEAD end
local function item_cost(item)
  if string.sub(item, 1, 1) == 's' then return #item - 1 + ITEM end
  return 8 + ITEM
end

-- An expired entry: the earliest by time to live, else the oldest flushed.
local function oldest_expired()
  local e = redis.call('ZRANGEBYSCORE', KE, '-inf', now, 'LIMIT', 0, 1)
  if e[1] then return e[1] end
  local w = redis.call('ZRANGE', KW, 0, 0, 'WITHSCORES')
  if w[1] and tonumber(w[2]) < flushed_below then return w[1] end
  return nil
end

-- Room for `need` more bytes: expired entries first, then (if `evict`) the
-- least recently used; `keep` never goes. nil if there is no room, else 1 if
-- live entries were evicted, 0 if not.
local function room(need, keep, evict)
  local u = used()
  while u + need > cap do
    local victim = oldest_expired()
    if not victim then break end
    local h = header(victim)
    remove(victim, h)
    if h then u = u - h.cost end
  end
  if u + need <= cap then return 0 end
  if not evict then return nil end
  while u + need > cap do
    local tail = redis.call('ZRANGE', KU, 0, 1)
    local victim = tail[1]
    if victim == keep then victim = tail[2] end
    if not victim then return nil end
    local h = header(victim)
    remove(victim, h)
    if h then u = u - h.cost end
  end
  return 1
end

if op == 'get' then
  local k = ARGV[5]
  local h = header(k)
  if not h then return {0} end
  local expired = is_expired(k)
  if expired and ARGV[6] ~= '1' then return {0} end
  touch(k)
  if h.typ == 'l' then return {1, 'value is a list'} end
  return {0, h.typ, redis.call('HGET', KD, k) or '', tonumber(h.flags), expired and 1 or 0}
end

if op == 'store' then
  local k, mode, typ, data, ttl, flags = ARGV[5], ARGV[6], ARGV[7], ARGV[8], tonumber(ARGV[9]), ARGV[10]
  local h = header(k)
  local live = h and not is_expired(k)
  if (mode == 'add' or mode == 'safe_add') and live then return {1, 'exists'} end
  if mode == 'replace' and not live then return {1, 'not found'} end
  if h and not live then remove(k, h); h = nil end
  if typ == '' then
    if h then remove(k, h) end
    return {0, 0}
  end
  local cost = entry_cost(k, size_of(typ, data))
  if cost > cap then return {1, 'no memory'} end
  local old = h and h.cost or 0
  local evict = mode == 'set' or mode == 'add' or mode == 'replace'
  local forcible = room(math.max(cost - old, 0), h and k, evict)
  if not forcible then return {1, 'no memory'} end
  if h and h.typ == 'l' then redis.call('DEL', list_key(k)) end
  redis.call('HSET', KT, k, typ .. ':' .. flags .. ':' .. cost)
  redis.call('HSET', KD, k, data)
  redis.call('HINCRBY', KM, 'used', cost - old)
  set_expiry(k, ttl)
  touch(k)
  rewrite(k)
  return {0, forcible}
end

if op == 'incr' then
  local k, dtyp, delta, ityp, init, ttl = ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], tonumber(ARGV[10])
  local h = header(k)
  if h and not is_expired(k) then
    if h.typ ~= 'i' and h.typ ~= 'f' then return {1, 'not a number'} end
    local typ = 'f'
    if h.typ == 'i' and dtyp == 'i' then
      local r = redis.pcall('HINCRBY', KD, k, delta)
      if type(r) == 'table' and r.err then return {1, 'integer overflow'} end
      typ = 'i'
    else
      local sum = tonumber(redis.call('HGET', KD, k)) + tonumber(delta)
      redis.call('HSET', KD, k, string.format('%.17g', sum))
      if h.typ ~= 'f' then redis.call('HSET', KT, k, 'f:' .. h.flags .. ':' .. h.cost) end
    end
    touch(k)
    rewrite(k)
    return {0, typ, redis.call('HGET', KD, k), 0}
  end
  if h then remove(k, h) end
  if ityp == '' then return {1, 'not found'} end
  local cost = entry_cost(k, 8)
  if cost > cap then return {1, 'no memory'} end
  local forcible = room(cost, nil, true)
  if not forcible then return {1, 'no memory'} end
  redis.call('HSET', KT, k, ityp .. ':0:' .. cost)
  redis.call('HSET', KD, k, init)
  redis.call('HINCRBY', KM, 'used', cost)
  set_expiry(k, ttl)
  touch(k)
  rewrite(k)
  return {0, ityp, init, forcible}
end

if op == 'ttl' then
  local k = ARGV[5]
  local h = header(k)
  if not h or is_expired(k) then return {1, 'not found'} end
  local e = redis.call('ZSCORE', KE, k)
  if not e then return {0, 0} end
  return {0, tonumber(e) - now}
end

if op == 'expire' then
  local k = ARGV[5]
  local h = header(k)
  if not h or is_expired(k) then return {1, 'not found'} end
  set_expiry(k, tonumber(ARGV[6]))
  return {0}
end

if op == 'flush_all' then
  redis.call('HSET', KM, 'flush', tonumber(redis.call('HGET', KM, 'seq') or 0) + 1)
  return {0}
end

if op == 'flush_expired' then
  local max = tonumber(ARGV[5])
  local n = 0
  while max == 0 or n < max do
    local victim = oldest_expired()
    if not victim then break end
    remove(victim, header(victim))
    n = n + 1
  end
  return {0, n}
end

if op == 'get_keys' then
  local max = tonumber(ARGV[5])
  local out, n, start = {0}, 0, 0
  while true do
    local batch = redis.call('ZRANGE', KU, start, start + 255)
    if #batch == 0 then break end
    for _, k in ipairs(batch) do
      if not is_expired(k) then
        n = n + 1
        out[n + 1] = k
        if max > 0 and n >= max then return out end
      end
    end
    start = start + 256
  end
  return out
end

if op == 'free_space' then
  return {0, math.max(cap - used(), 0)}
end

if op == 'push' then
  local k, front, item = ARGV[5], ARGV[6] == '1', ARGV[7]
  local h = header(k)
  local live = h and not is_expired(k)
  if live and h.typ ~= 'l' then return {1, 'value not a list'} end
  if h and not live then remove(k, h); h = nil end
  local old = h and h.cost or 0
  local total = (h and h.cost or entry_cost(k, 0)) + item_cost(item)
  if total > cap then return {1, 'no memory'} end
  if not room(total - old, h and k, false) then return {1, 'no memory'} end
  local length = redis.call(front and 'LPUSH' or 'RPUSH', list_key(k), item)
  redis.call('HSET', KT, k, 'l:0:' .. total)
  redis.call('HINCRBY', KM, 'used', total - old)
  touch(k)
  rewrite(k)
  return {0, length}
end

if op == 'pop' then
  local k, front = ARGV[5], ARGV[6] == '1'
  local h = header(k)
  if not h then return {0} end
  if is_expired(k) then remove(k, h); return {0} end
  if h.typ ~= 'l' then return {1, 'value not a list'} end
  local item = redis.call(front and 'LPOP' or 'RPOP', list_key(k))
  if not item then remove(k, h); return {0} end
  if redis.call('LLEN', list_key(k)) == 0 then
    remove(k, h)
  else
    local c = item_cost(item)
    redis.call('HSET', KT, k, 'l:0:' .. (h.cost - c))
    redis.call('HINCRBY', KM, 'used', -c)
    touch(k)
  end
  return {0, string.sub(item, 1, 1), string.sub(item, 2)}
end

if op == 'llen' then
  local k = ARGV[5]
  local h = header(k)
  if not h or is_expired(k) then return {0, 0} end
  if h.typ ~= 'l' then return {1, 'value not a list'} end
  touch(k)
  return {0, redis.call('LLEN', list_key(k))}
end

return redis.error_reply('moonwall: unknown shared dict operation')
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_strictly() {
        let config = RedisConfig::parse("redis://127.0.0.1:6380/2?timeout_ms=500").unwrap();
        assert_eq!(
            (config.host.as_str(), config.port, config.db, config.timeout),
            ("127.0.0.1", 6380, 2, Duration::from_millis(500))
        );
        let config = RedisConfig::parse("redis://:s%40cret@cache.local").unwrap();
        assert_eq!(config.password.as_deref(), Some("s@cret"));
        assert_eq!(config.port, 6379);
        // The password never shows.
        assert_eq!(config.to_string(), "redis://:***@cache.local:6379/0");
        let config = RedisConfig::parse("redis://u:p@[::1]:7000").unwrap();
        assert_eq!(config.to_string(), "redis://u:***@[::1]:7000/0");
        for bad in [
            "redis://",
            "redis://host:0",
            "redis://host:port",
            "redis://host/x",
            "redis://user@host",
            "redis://host?timeout_ms=0",
            "redis://host?tls=1",
            "redis://ho st",
            "redis://[::1",
        ] {
            assert!(RedisConfig::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn values_round_trip_through_their_encoding() {
        for value in [
            Value::Str(Bytes::from_static(b"\0bytes\xff")),
            Value::Int(i64::MIN),
            Value::Float(0.1),
            Value::Float(-1e300),
            Value::Float(f64::INFINITY),
            Value::Bool(true),
            Value::Bool(false),
        ] {
            let (kind, data) = encode(&value);
            assert_eq!(decode(kind, data).unwrap(), value);
        }
        assert!(parse_float("-nan").unwrap().is_nan());
        // Lua's %.17g writes exponents with a sign.
        assert_eq!(parse_float("1.2500000000000000e+300"), Some(1.25e300));
    }
}
