//! The Redis server's address and options, from the `shared_dicts_backend`
//! URL (`redis://[[user]:password@]host[:port][/db][?timeout_ms=N]`), parsed
//! strictly and shown with its password hidden.

use std::fmt;
use std::time::Duration;

/// How long a call may take by default (`?timeout_ms=` in the URL).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest `timeout_ms` accepted.
const MAX_TIMEOUT_MS: u64 = 60_000;

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
}
