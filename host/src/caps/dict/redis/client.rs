//! The Redis client ([`Backend`], shared by every tenant's dicts): a pool of
//! connections to the server, the RESP2 protocol on each (every reply
//! bounded before anything is allocated for it), and the script's calls, by
//! `EVALSHA` (by `EVAL` when the server does not have it yet).

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;

use super::SCRIPT;
use super::config::RedisConfig;
use super::store::RedisDict;
use crate::caps::dict::Error;

/// Most connections open to the server at once (callers beyond wait).
pub const MAX_CONNECTIONS: usize = 64;
/// Most of them one tenant's calls hold at once (its calls beyond wait, at
/// most until their deadline): no tenant takes the whole pool.
pub const TENANT_CONNECTIONS: usize = 16;
/// Most idle connections kept for reuse.
const MAX_IDLE: usize = 16;
/// The longest line of a reply (a status or error message).
const MAX_LINE: usize = 64 << 10;
/// What a reply may hold beyond the dict's size (headers, small values).
pub(super) const REPLY_SLACK: u64 = 64 << 10;

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
            tenants: Mutex::new(std::collections::HashMap::new()),
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
            share: self.0.share_of(tenant),
        }
    }
}

/// A connection pool and the script's digest.
pub struct Client {
    config: RedisConfig,
    idle: Mutex<Vec<Connection>>,
    slots: tokio::sync::Semaphore,
    /// Each tenant's share of `slots` ([`TENANT_CONNECTIONS`]).
    tenants: Mutex<std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>>,
    script_sha: String,
}

impl Client {
    /// `tenant`'s share of the connections: one per tenant, for all its
    /// dicts.
    fn share_of(&self, tenant: &str) -> Arc<tokio::sync::Semaphore> {
        let mut tenants = self
            .tenants
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        tenants
            .entry(tenant.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(TENANT_CONNECTIONS)))
            .clone()
    }
}

/// Bounds on one reply.
#[derive(Clone, Copy)]
pub(super) struct Budget {
    pub(super) bytes: u64,
    pub(super) items: usize,
}

#[derive(Debug)]
pub(super) enum Reply {
    Nil,
    Int(i64),
    Bytes(Vec<u8>),
    Status,
    Error(String),
    Array(Vec<Reply>),
}

pub(super) fn protocol(why: impl fmt::Display) -> Error {
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
    /// The call waits for one of `share`'s connections first.
    pub(super) async fn eval(
        &self,
        share: &tokio::sync::Semaphore,
        args: &[&[u8]],
        budget: Budget,
        deadline: Instant,
    ) -> Result<Reply, Error> {
        let timeout_at = Instant::now() + self.config.timeout;
        let limit = timeout_at.min(deadline);
        let call = async {
            let _share = share
                .acquire()
                .await
                .map_err(|_| Error::Backend("the Redis client is closed".into()))?;
            self.eval_now(args, budget).await
        };
        match tokio::time::timeout_at(limit.into(), call).await {
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
