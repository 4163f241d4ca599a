//! What the policy says about outbound connections: the destinations
//! (`outbound`), the non-public addresses granted (`outbound_private`), the
//! bounds per request tree and per tenant (`outbound_*`), and which
//! addresses are not public.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::site::hosts::HostPattern;
use crate::site::limits::{DefaultValue, HOUR_MS, KIB_PER_GIB, LimitDef};

/// One `outbound` entry: `scheme://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub host: DestinationHost,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationHost {
    /// A name or a `*.name` wildcard.
    Name(HostPattern),
    /// An address literal: it grants that address, even a non-public one.
    Address(IpAddr),
}

impl Destination {
    /// Parse `scheme://host[:port]`: scheme `http` (port 80 by default),
    /// `https` (443) or `tcp` (the port is required); host a name, a
    /// `*.name` wildcard, an IPv4 address or a bracketed IPv6 address.
    pub fn parse(text: &str) -> Result<Destination, String> {
        let bad = || {
            format!(
                "outbound `{text}` is not scheme://host[:port] (scheme http, https or tcp; host a name, *.name or an address)"
            )
        };
        let (scheme, rest) = text.split_once("://").ok_or_else(bad)?;
        let default_port = match scheme {
            "http" => Some(80),
            "https" => Some(443),
            "tcp" => None,
            _ => return Err(bad()),
        };
        let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
            let (address, after) = inner.split_once(']').ok_or_else(bad)?;
            let port = match after.strip_prefix(':') {
                Some(port) => Some(port),
                None if after.is_empty() => None,
                None => return Err(bad()),
            };
            let address: Ipv6Addr = address.parse().map_err(|_| bad())?;
            (
                DestinationHost::Address(canonical(IpAddr::V6(address))),
                port,
            )
        } else {
            let (host, port) = match rest.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            };
            let host = if let Ok(address) = host.parse::<Ipv4Addr>() {
                DestinationHost::Address(IpAddr::V4(address))
            } else {
                DestinationHost::Name(HostPattern::parse(host).map_err(|_| bad())?)
            };
            (host, port)
        };
        let port = match port {
            Some(port) => match port.parse::<u16>() {
                Ok(port) if port != 0 => port,
                _ => return Err(bad()),
            },
            None => default_port
                .ok_or_else(|| format!("outbound `{text}`: a tcp destination needs a port"))?,
        };
        Ok(Destination { host, port })
    }
}

/// What a script asked to connect to, normalized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Name(String),
    Address(IpAddr),
}

impl Target {
    /// A host as a script gives it: a name (lowercased, without a trailing
    /// dot), an IPv4 address, or an IPv6 address with or without brackets.
    pub fn parse(host: &[u8]) -> Result<Target, String> {
        let text = std::str::from_utf8(host)
            .ok()
            .filter(|text| !text.is_empty() && text.len() <= 255)
            .ok_or_else(|| "bad host name".to_string())?;
        let bare = text
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .unwrap_or(text);
        if let Ok(address) = bare.parse::<IpAddr>() {
            return Ok(Target::Address(canonical(address)));
        }
        let name = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
        if !crate::site::hosts::is_dns_name(&name) {
            return Err(format!("bad host name \"{}\"", text.escape_debug()));
        }
        Ok(Target::Name(name))
    }

    /// Whether `destination` grants this target on `port`.
    pub fn matches(&self, destination: &Destination, port: u16) -> bool {
        destination.port == port
            && match (self, &destination.host) {
                (Target::Name(name), DestinationHost::Name(pattern)) => pattern.matches(name),
                (Target::Address(address), DestinationHost::Address(granted)) => address == granted,
                _ => false,
            }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Name(name) => f.write_str(name),
            Target::Address(IpAddr::V6(address)) => write!(f, "[{address}]"),
            Target::Address(address) => write!(f, "{address}"),
        }
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is the IPv4 address.
pub fn canonical(address: IpAddr) -> IpAddr {
    address.to_canonical()
}

/// An address range of `outbound_private`: an address or `address/bits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressRange {
    network: IpAddr,
    bits: u8,
}

impl AddressRange {
    pub fn parse(text: &str) -> Result<AddressRange, String> {
        let bad = || {
            format!(
                "outbound_private `{text}` is not an address or a range (like 10.0.0.0/8 or fd00::/8)"
            )
        };
        let (address, bits) = match text.split_once('/') {
            Some((address, bits)) => (address, Some(bits)),
            None => (text, None),
        };
        let address: IpAddr = address.parse().map_err(|_| bad())?;
        let width = if address.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            // Plain decimal: no sign, no leading zero.
            Some(text) => match text.parse::<u8>() {
                Ok(bits) if bits <= width && bits.to_string() == text => bits,
                _ => return Err(bad()),
            },
            None => width,
        };
        let mut range = AddressRange {
            network: address,
            bits,
        };
        if range.masked(address) != address {
            return Err(format!(
                "outbound_private `{text}`: the address has bits set beyond the /{bits} prefix"
            ));
        }
        // `::ffff:a.b.c.d/n` is the IPv4 range.
        if let IpAddr::V6(v6) = address
            && let Some(v4) = v6.to_ipv4_mapped()
            && bits >= 96
        {
            range = AddressRange {
                network: IpAddr::V4(v4),
                bits: bits - 96,
            };
        }
        Ok(range)
    }

    fn masked(&self, address: IpAddr) -> IpAddr {
        match address {
            IpAddr::V4(v4) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        }
    }

    /// Whether `address` (canonical) lies in the range.
    pub fn contains(&self, address: IpAddr) -> bool {
        address.is_ipv4() == self.network.is_ipv4() && self.masked(address) == self.network
    }
}

/// What kind of non-public address `address` (canonical) is; `None` for a
/// public one.
pub fn non_public(address: IpAddr) -> Option<Special> {
    match address {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => non_public_v6(v6),
    }
}

/// A kind of address that is not public.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    Unspecified,
    Loopback,
    Private,
    SharedCgnat,
    LinkLocal,
    UniqueLocal,
    SiteLocal,
    Documentation,
    Benchmarking,
    Multicast,
    Broadcast,
    Reserved,
    /// `64:ff9b:1::/48`, local-use NAT64 (RFC 8215): translated by a
    /// network's own gateway, so where it leads is not public knowledge.
    LocalNat64,
}

impl Special {
    pub fn describe(self) -> &'static str {
        match self {
            Special::Unspecified => "an unspecified address",
            Special::Loopback => "a loopback address",
            Special::Private => "a private address",
            Special::SharedCgnat => "a shared (CGNAT) address",
            Special::LinkLocal => "a link-local address",
            Special::UniqueLocal => "a unique-local address",
            Special::SiteLocal => "a site-local address",
            Special::Documentation => "a documentation address",
            Special::Benchmarking => "a benchmarking address",
            Special::Multicast => "a multicast address",
            Special::Broadcast => "a broadcast address",
            Special::Reserved => "a reserved address",
            Special::LocalNat64 => "a local-use NAT64 address",
        }
    }

    /// Addresses no policy can grant: TCP cannot reach them, or (the
    /// unspecified address) the system takes them for the local host.
    pub fn never_granted(self) -> bool {
        matches!(
            self,
            Special::Unspecified | Special::Multicast | Special::Broadcast
        )
    }
}

fn in_v4(address: Ipv4Addr, network: [u8; 4], bits: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
    u32::from(address) & mask == u32::from(Ipv4Addr::from(network))
}

fn non_public_v4(address: Ipv4Addr) -> Option<Special> {
    let table: [([u8; 4], u32, Special); 16] = [
        ([0, 0, 0, 0], 32, Special::Unspecified),
        ([0, 0, 0, 0], 8, Special::Reserved),
        ([10, 0, 0, 0], 8, Special::Private),
        ([100, 64, 0, 0], 10, Special::SharedCgnat),
        ([127, 0, 0, 0], 8, Special::Loopback),
        ([169, 254, 0, 0], 16, Special::LinkLocal),
        ([172, 16, 0, 0], 12, Special::Private),
        ([192, 0, 0, 0], 24, Special::Reserved),
        ([192, 0, 2, 0], 24, Special::Documentation),
        ([192, 88, 99, 0], 24, Special::Reserved),
        ([192, 168, 0, 0], 16, Special::Private),
        ([198, 18, 0, 0], 15, Special::Benchmarking),
        ([198, 51, 100, 0], 24, Special::Documentation),
        ([203, 0, 113, 0], 24, Special::Documentation),
        ([255, 255, 255, 255], 32, Special::Broadcast),
        ([224, 0, 0, 0], 4, Special::Multicast),
    ];
    for (network, bits, kind) in table {
        if in_v4(address, network, bits) {
            return Some(kind);
        }
    }
    // 240.0.0.0/4: reserved for future use.
    if in_v4(address, [240, 0, 0, 0], 4) {
        return Some(Special::Reserved);
    }
    None
}

fn non_public_v6(address: Ipv6Addr) -> Option<Special> {
    let value = u128::from(address);
    let within = |network: u128, bits: u32| {
        let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
        value & mask == network
    };
    if value == 0 {
        return Some(Special::Unspecified);
    }
    if value == 1 {
        return Some(Special::Loopback);
    }
    if let Some(v4) = address.to_ipv4_mapped() {
        return non_public_v4(v4);
    }
    // Local-use NAT64 (64:ff9b:1::/48) is whatever the local network's
    // translator makes of it, whatever IPv4 address it seems to embed: the
    // whole prefix is non-public.
    if within(0x0064_ff9b_0001 << 80, 48) {
        return Some(Special::LocalNat64);
    }
    // Forms that embed an IPv4 address: judged by it (NAT64's well-known
    // prefix and 6to4); a public IPv4 inside is public.
    if within(0x0064_ff9b << 96, 96) {
        return non_public_v4(Ipv4Addr::from(value as u32));
    }
    if within(0x2002 << 112, 16) {
        return non_public_v4(Ipv4Addr::from((value >> 80) as u32));
    }
    let table: [(u128, u32, Special); 10] = [
        // ::/8 (the IPv4-compatible ::a.b.c.d among them): reserved.
        (0, 8, Special::Reserved),
        (0x0100 << 112, 64, Special::Reserved),
        (0x2001_0db8 << 96, 32, Special::Documentation),
        (0x2001 << 112, 23, Special::Reserved),
        (0x3fff << 112, 20, Special::Documentation),
        (0x5f00 << 112, 16, Special::Reserved),
        (0xfc00 << 112, 7, Special::UniqueLocal),
        (0xfe80 << 112, 10, Special::LinkLocal),
        (0xfec0 << 112, 10, Special::SiteLocal),
        (0xff00 << 112, 8, Special::Multicast),
    ];
    for (network, bits, kind) in table {
        if within(network, bits) {
            return Some(kind);
        }
    }
    None
}

/// The bounds on outbound connections: per client request (the request
/// and all its subrequests together), the keepalive pool's, and the
/// tenant's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboundLimits {
    /// Connects one request may make (new or reused).
    pub max_connections: u64,
    /// Sockets one request may have open at once.
    pub max_sockets: u64,
    /// Bytes one request may receive from all its connections.
    pub max_receive_kib: u64,
    pub connect_timeout_ms: u64,
    pub send_timeout_ms: u64,
    pub read_timeout_ms: u64,
    /// Idle connections the tenant may keep (0: none are kept).
    pub keepalive_pool: u64,
    /// The longest an idle connection is kept.
    pub keepalive_timeout_ms: u64,
    /// Connections the tenant may have open at once, all its requests and
    /// its idle keepalive connections together.
    pub max_tenant_sockets: u64,
}

/// One bound of [`OutboundLimits`], a `[capabilities]` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboundLimit {
    MaxConnections,
    MaxSockets,
    MaxReceiveKib,
    ConnectTimeoutMs,
    SendTimeoutMs,
    ReadTimeoutMs,
    KeepalivePool,
    KeepaliveTimeoutMs,
    MaxTenantSockets,
}

impl OutboundLimit {
    pub fn def(self) -> &'static LimitDef {
        &OUTBOUND_LIMITS[self as usize]
    }
}

const MINUTE_MS: u64 = 60_000;

/// The most connections a tenant has open by default.
pub const DEFAULT_MAX_TENANT_SOCKETS: u64 = 256;

/// By default a tenant may hold [`DEFAULT_MAX_TENANT_SOCKETS`] connections,
/// or an eighth of this process's open-file limit if that is fewer (but at
/// least 16): `moonwall serve` raises the soft limit to the hard one before
/// it reads policies, and under a hard limit of 1,024 eight tenants at their
/// budget still leave room for the clients' connections.
fn tenant_sockets_default() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given, which lives here.
    let open_files = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        1024
    };
    (open_files / 8).clamp(16, DEFAULT_MAX_TENANT_SOCKETS)
}

/// The outbound bounds, defined once, in the order of [`OutboundLimit`].
pub static OUTBOUND_LIMITS: [LimitDef; 9] = [
    LimitDef {
        key: "outbound_max_connections",
        aliases: &[],
        min: 1,
        max: 10_000,
        default: DefaultValue::Value(64),
        doc: "connects per client request, its subrequests included (new or reused)",
    },
    LimitDef {
        key: "outbound_max_sockets",
        aliases: &[],
        min: 1,
        max: 1024,
        default: DefaultValue::Value(32),
        doc: "sockets open at once per client request, its subrequests included",
    },
    LimitDef {
        key: "outbound_max_receive_kib",
        aliases: &[],
        min: 1,
        max: KIB_PER_GIB,
        default: DefaultValue::Value(16 << 10),
        doc: "KiB received per client request, its subrequests and all connections together (the default is 16 MiB, the most 1 GiB)",
    },
    LimitDef {
        key: "outbound_connect_timeout_ms",
        aliases: &[],
        min: 1,
        max: HOUR_MS,
        default: DefaultValue::Value(MINUTE_MS),
        doc: "the connect timeout (name resolution included), and the most `settimeout` may set",
    },
    LimitDef {
        key: "outbound_send_timeout_ms",
        aliases: &[],
        min: 1,
        max: HOUR_MS,
        default: DefaultValue::Value(MINUTE_MS),
        doc: "the longest wait for the peer to take data",
    },
    LimitDef {
        key: "outbound_read_timeout_ms",
        aliases: &[],
        min: 1,
        max: HOUR_MS,
        default: DefaultValue::Value(MINUTE_MS),
        doc: "the longest wait for data",
    },
    LimitDef {
        key: "outbound_keepalive_pool",
        aliases: &[],
        min: 0,
        max: 1024,
        default: DefaultValue::Value(32),
        doc: "idle connections the tenant keeps (0: `setkeepalive` closes)",
    },
    LimitDef {
        key: "outbound_keepalive_timeout_ms",
        aliases: &[],
        min: 1,
        max: HOUR_MS,
        default: DefaultValue::Value(MINUTE_MS),
        doc: "the longest an idle connection is kept",
    },
    LimitDef {
        key: "outbound_max_tenant_sockets",
        aliases: &[],
        min: 1,
        max: 65_536,
        default: DefaultValue::Computed {
            value: tenant_sockets_default,
            doc: "256, or an eighth of the server's open-file limit if that is fewer (at least 16)",
        },
        doc: "connections the tenant has open at once, all its requests and its idle keepalive connections together",
    },
];

impl Default for OutboundLimits {
    fn default() -> Self {
        let default = |limit: OutboundLimit| limit.def().default_value().unwrap_or(u64::MAX);
        use OutboundLimit as L;
        OutboundLimits {
            max_connections: default(L::MaxConnections),
            max_sockets: default(L::MaxSockets),
            max_receive_kib: default(L::MaxReceiveKib),
            connect_timeout_ms: default(L::ConnectTimeoutMs),
            send_timeout_ms: default(L::SendTimeoutMs),
            read_timeout_ms: default(L::ReadTimeoutMs),
            keepalive_pool: default(L::KeepalivePool),
            keepalive_timeout_ms: default(L::KeepaliveTimeoutMs),
            max_tenant_sockets: default(L::MaxTenantSockets),
        }
    }
}

impl OutboundLimits {
    /// The value of `limit`, to set.
    pub fn slot(&mut self, limit: OutboundLimit) -> &mut u64 {
        use OutboundLimit as L;
        match limit {
            L::MaxConnections => &mut self.max_connections,
            L::MaxSockets => &mut self.max_sockets,
            L::MaxReceiveKib => &mut self.max_receive_kib,
            L::ConnectTimeoutMs => &mut self.connect_timeout_ms,
            L::SendTimeoutMs => &mut self.send_timeout_ms,
            L::ReadTimeoutMs => &mut self.read_timeout_ms,
            L::KeepalivePool => &mut self.keepalive_pool,
            L::KeepaliveTimeoutMs => &mut self.keepalive_timeout_ms,
            L::MaxTenantSockets => &mut self.max_tenant_sockets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_destinations() {
        for good in [
            "https://api.example.com",
            "http://*.example.com:8080",
            "tcp://10.0.0.1:6379",
            "http://[::1]:80",
        ] {
            assert!(Destination::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "api.example.com",
            "ftp://a.com",
            "http://a.com:0",
            "http://a.com:x",
            "tcp://a.com",
            "http://",
        ] {
            assert!(Destination::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_outbound_bounds_are_documented_as_defined() {
        let keys: Vec<&str> = OUTBOUND_LIMITS.iter().map(|def| def.key).collect();
        assert_eq!(keys.len(), 9);
        for (at, def) in OUTBOUND_LIMITS.iter().enumerate() {
            assert!(
                def.check(def.default_value().unwrap()).is_ok(),
                "{}",
                def.key
            );
            assert_eq!(keys.iter().position(|k| *k == def.key), Some(at));
        }
        crate::site::limits::assert_documented(&OUTBOUND_LIMITS);
    }

    #[test]
    fn destinations_parse() {
        let d = Destination::parse("http://api.example.com").unwrap();
        assert_eq!(d.port, 80);
        assert_eq!(Destination::parse("https://a.com").unwrap().port, 443);
        assert_eq!(
            Destination::parse("tcp://10.0.0.1:6379").unwrap().port,
            6379
        );
        let v6 = Destination::parse("http://[::ffff:127.0.0.1]:8080").unwrap();
        assert_eq!(
            v6.host,
            DestinationHost::Address("127.0.0.1".parse().unwrap())
        );
        for bad in [
            "api.example.com",
            "ftp://a.com",
            "http://a.com:0",
            "http://a.com:x",
            "tcp://a.com",
            "http://",
            "http://[::1",
            "http://[nope]:80",
            "http://*:80",
            "http://a.com:80/path",
        ] {
            assert!(Destination::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn targets_match() {
        let wild = Destination::parse("http://*.example.com:8080").unwrap();
        let t = Target::parse(b"A.Example.com.").unwrap();
        assert!(t.matches(&wild, 8080));
        assert!(!t.matches(&wild, 80));
        assert!(!Target::parse(b"example.com").unwrap().matches(&wild, 8080));
        let lit = Destination::parse("tcp://127.0.0.1:9").unwrap();
        assert!(Target::parse(b"::ffff:127.0.0.1").unwrap().matches(&lit, 9));
        assert!(
            Target::parse(b"[::ffff:127.0.0.1]")
                .unwrap()
                .matches(&lit, 9)
        );
        assert!(!Target::parse(b"localhost").unwrap().matches(&lit, 9));
        for bad in [&b""[..], b"a b", b"a..b", b"\xff", b"a/b", b"x:80"] {
            assert!(Target::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ranges() {
        let r = AddressRange::parse("10.0.0.0/8").unwrap();
        assert!(r.contains("10.1.2.3".parse().unwrap()));
        assert!(!r.contains("11.0.0.1".parse().unwrap()));
        let one = AddressRange::parse("::1").unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        let mapped = AddressRange::parse("::ffff:127.0.0.0/104").unwrap();
        assert!(mapped.contains("127.0.0.5".parse().unwrap()));
        let all = AddressRange::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        for bad in ["10.0.0.1/8", "10.0.0.0/33", "x", "10.0.0.0/", "10.0.0.0/08"] {
            assert!(AddressRange::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn non_public_addresses() {
        let kind = |s: &str| non_public(canonical(s.parse().unwrap()));
        assert_eq!(kind("127.0.0.1"), Some(Special::Loopback));
        assert_eq!(kind("::ffff:127.0.0.1"), Some(Special::Loopback));
        assert_eq!(kind("::1"), Some(Special::Loopback));
        assert_eq!(kind("0.0.0.0"), Some(Special::Unspecified));
        assert_eq!(kind("::"), Some(Special::Unspecified));
        assert_eq!(kind("10.9.8.7"), Some(Special::Private));
        assert_eq!(kind("172.31.0.1"), Some(Special::Private));
        assert_eq!(kind("192.168.1.1"), Some(Special::Private));
        assert_eq!(kind("100.100.0.1"), Some(Special::SharedCgnat));
        assert_eq!(kind("169.254.169.254"), Some(Special::LinkLocal));
        assert_eq!(kind("192.0.2.1"), Some(Special::Documentation));
        assert_eq!(kind("224.0.0.1"), Some(Special::Multicast));
        assert_eq!(kind("255.255.255.255"), Some(Special::Broadcast));
        assert_eq!(kind("fd00::1"), Some(Special::UniqueLocal));
        assert_eq!(kind("fe80::1"), Some(Special::LinkLocal));
        assert_eq!(kind("2001:db8::1"), Some(Special::Documentation));
        assert_eq!(kind("ff02::1"), Some(Special::Multicast));
        assert_eq!(kind("64:ff9b::10.0.0.1"), Some(Special::Private));
        assert_eq!(kind("2002:7f00:1::"), Some(Special::Loopback));
        assert_eq!(kind("::127.0.0.1"), Some(Special::Reserved));
        assert_eq!(kind("8.8.8.8"), None);
        assert_eq!(kind("172.32.0.1"), None);
        assert_eq!(kind("2606:4700::1111"), None);
        assert_eq!(kind("64:ff9b::8.8.8.8"), None);
        // Local-use NAT64: the whole /48, whatever it seems to embed.
        assert_eq!(kind("64:ff9b:1::8.8.8.8"), Some(Special::LocalNat64));
        assert_eq!(kind("64:ff9b:1:ffff::1"), Some(Special::LocalNat64));
        // Next to it, the rest of ::/8 is reserved anyway.
        assert_eq!(kind("64:ff9b:2::8.8.8.8"), Some(Special::Reserved));
    }
}
