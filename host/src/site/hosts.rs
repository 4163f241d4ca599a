//! Which tenant a request is for: its `Host` header (HTTP/1.1) or
//! `:authority` (HTTP/2), matched against each tenant's `hosts`.
//!
//! A pattern is an exact name (`api.example.com`) or a wildcard of one or
//! more labels (`*.example.com`, which matches `a.example.com` and
//! `a.b.example.com` but not `example.com`). No two tenants may have
//! patterns that can match the same name, so every name has at most one
//! tenant and precedence never decides who serves it.

use std::collections::HashMap;

/// One entry of a tenant's `hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// `*.example.com`, kept as its suffix `.example.com`.
    Wildcard(String),
}

impl HostPattern {
    /// Parse and lowercase a pattern, or say what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let lower = text.to_ascii_lowercase();
        let (wildcard, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        if !is_dns_name(name) {
            return Err(format!(
                "`{text}` is not a host name (like example.com) or a wildcard (like *.example.com); ports are not part of it"
            ));
        }
        Ok(if wildcard {
            HostPattern::Wildcard(format!(".{name}"))
        } else {
            HostPattern::Exact(name.to_string())
        })
    }

    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => name == host,
            HostPattern::Wildcard(suffix) => host.len() > suffix.len() && host.ends_with(&**suffix),
        }
    }

    /// Whether some host name matches both patterns.
    pub fn overlaps(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (HostPattern::Exact(a), HostPattern::Exact(b)) => a == b,
            (HostPattern::Exact(name), wildcard @ HostPattern::Wildcard(_))
            | (wildcard @ HostPattern::Wildcard(_), HostPattern::Exact(name)) => {
                wildcard.matches(name)
            }
            (HostPattern::Wildcard(a), HostPattern::Wildcard(b)) => {
                a.ends_with(&**b) || b.ends_with(&**a)
            }
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Wildcard(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// Whether `name` (lowercase, without a trailing dot) is a DNS name: at
/// most 253 bytes of dot-separated labels, each 1 to 63 letters, digits,
/// `-` or `_`, not starting or ending with `-`. The one rule for every host
/// name moonwall accepts: site patterns and outbound destinations alike.
pub fn is_dns_name(name: &str) -> bool {
    let valid_label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    !name.is_empty() && name.len() <= 253 && name.split('.').all(valid_label)
}

/// The host of an authority without its port: `example.com:8080` →
/// `example.com`; `[::1]:80` → `[::1]` (an IPv6 literal keeps its brackets).
pub fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority
            .find(']')
            .map(|end| &authority[..=end])
            .unwrap_or(authority);
    }
    authority.split(':').next().unwrap_or(authority)
}

/// The host name of a `Host` header or authority: lowercased, without its
/// port or a trailing dot. `None` if there is no usable name.
pub fn normalize_host(authority: &str) -> Option<String> {
    let authority = authority.trim();
    if authority.starts_with('[') && !authority.contains(']') {
        return None;
    }
    let host = strip_port(authority);
    let host = host.strip_suffix('.').unwrap_or(host);
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// Host patterns to tenants (by index).
#[derive(Debug, Default, Clone)]
pub struct HostTable {
    exact: HashMap<String, usize>,
    /// Longest suffix first (patterns never overlap, so this only makes the
    /// order deterministic).
    wildcards: Vec<(String, usize)>,
}

impl HostTable {
    pub fn insert(&mut self, pattern: &HostPattern, tenant: usize) {
        match pattern {
            HostPattern::Exact(name) => {
                self.exact.insert(name.clone(), tenant);
            }
            HostPattern::Wildcard(suffix) => {
                self.wildcards.push((suffix.clone(), tenant));
                self.wildcards
                    .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
            }
        }
    }

    pub fn lookup(&self, host: &str) -> Option<usize> {
        if let Some(&tenant) = self.exact.get(host) {
            return Some(tenant);
        }
        self.wildcards
            .iter()
            .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(&**suffix))
            .map(|&(_, tenant)| tenant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(text: &str) -> HostPattern {
        HostPattern::parse(text).unwrap()
    }

    #[test]
    fn patterns_parse_and_match() {
        assert_eq!(
            pattern("API.Example.com"),
            HostPattern::Exact("api.example.com".into())
        );
        assert!(pattern("*.example.com").matches("a.example.com"));
        assert!(pattern("*.example.com").matches("a.b.example.com"));
        assert!(!pattern("*.example.com").matches("example.com"));
        assert!(!pattern("*.example.com").matches("badexample.com"));
        for bad in [
            "", "*", "*.", "a..b", "a:80", "a/b", "*.*.a", "a.*.b", "-a.com", "a b",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn overlaps_are_found() {
        assert!(pattern("a.com").overlaps(&pattern("a.com")));
        assert!(!pattern("a.com").overlaps(&pattern("b.com")));
        assert!(pattern("*.a.com").overlaps(&pattern("x.a.com")));
        assert!(!pattern("*.a.com").overlaps(&pattern("a.com")));
        assert!(pattern("*.a.com").overlaps(&pattern("*.b.a.com")));
        assert!(!pattern("*.a.com").overlaps(&pattern("*.ba.com")));
    }

    #[test]
    fn hosts_are_normalized() {
        assert_eq!(
            normalize_host("Example.COM:8080").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            normalize_host("example.com.").as_deref(),
            Some("example.com")
        );
        assert_eq!(normalize_host("[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(normalize_host(":80"), None);
        assert_eq!(normalize_host("[::1"), None);
    }

    #[test]
    fn table_lookup() {
        let mut table = HostTable::default();
        table.insert(&pattern("a.com"), 0);
        table.insert(&pattern("*.b.com"), 1);
        assert_eq!(table.lookup("a.com"), Some(0));
        assert_eq!(table.lookup("x.b.com"), Some(1));
        assert_eq!(table.lookup("b.com"), None);
        assert_eq!(table.lookup("c.com"), None);
    }
}
