//! A policy's `[capabilities]`, composed of the capabilities' own sections.
//!
//! Each capability owns the keys it reads: it declares them as a serde
//! struct (with spans, so that every problem is reported as
//! `file:line:col`) and checks them once, into the typed values its grant is
//! built from ([`PolicySection`]). The policy composes the sections of the
//! capabilities' list (`super::SECTIONS`, from `capabilities!`); a key no
//! section owns is an error that lists every key.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::de::DeserializeOwned;

use super::Capabilities;
use crate::site::config::Problems;

/// A value as the policy wrote it, and what it was parsed into (once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written<T> {
    pub text: String,
    pub value: T,
}

impl<T> PartialEq<&str> for Written<T> {
    fn eq(&self, other: &&str) -> bool {
        self.text == *other
    }
}

/// What a section's checks need from the policy around it.
pub struct PolicyContext<'a, 'p> {
    /// The policy file's directory: relative paths start there.
    pub(crate) base: &'a Path,
    /// Directories every path a policy grants must lie inside.
    pub(crate) allowed_roots: &'a [PathBuf],
    /// The upstreams the server config declares (a policy grants some).
    pub(crate) upstreams: &'a crate::site::upstreams::Upstreams,
    pub(crate) problems: &'a mut Problems<'p>,
}

/// A capability's keys of `[capabilities]`.
pub trait PolicySection: DeserializeOwned + Default {
    /// What the section checks into.
    type Config;
    /// Check the section, reporting each problem at its place.
    fn apply(self, cx: &mut PolicyContext) -> Self::Config;
}

/// The section of a capability that has no keys.
#[derive(Debug, Default, serde::Deserialize)]
pub struct NoSection {}

impl PolicySection for NoSection {
    type Config = ();
    fn apply(self, _: &mut PolicyContext) {}
}

/// One capability's section, for [`super::SECTIONS`].
pub(crate) struct Section {
    /// The keys it owns, in the order it declares them.
    pub(crate) keys: fn() -> &'static [&'static str],
    /// Read and check it into its field of [`Capabilities`].
    pub(crate) read: fn(&mut PolicyContext, &mut Capabilities),
}

/// Every key of `[capabilities]`, section by section.
pub fn keys() -> &'static [&'static str] {
    static KEYS: OnceLock<&'static [&'static str]> = OnceLock::new();
    KEYS.get_or_init(|| {
        let all: Vec<&'static str> = super::SECTIONS
            .iter()
            .flat_map(|s| (s.keys)())
            .copied()
            .collect();
        Vec::leak(all)
    })
}

/// The `[capabilities]` of the policy in `cx.problems` (its file and
/// text): every key checked by the section that owns it.
pub(crate) fn parse(written: &[toml::Spanned<String>], cx: &mut PolicyContext) -> Capabilities {
    let keys = keys();
    for key in written {
        if !keys.contains(&key.get_ref().as_str()) {
            let message =
                <serde::de::value::Error as serde::de::Error>::unknown_field(key.get_ref(), keys);
            cx.problems.at(key.span(), message);
        }
    }
    let mut capabilities = Capabilities::default();
    for section in super::SECTIONS {
        (section.read)(cx, &mut capabilities);
    }
    capabilities
}

/// Deserialize section `S` from the policy's `[capabilities]` (its other
/// keys belong to other sections), then check it.
pub(crate) fn read_section<S: PolicySection>(cx: &mut PolicyContext) -> S::Config
where
    S::Config: Default,
{
    #[derive(serde::Deserialize)]
    #[serde(bound = "S: PolicySection")]
    struct Policy<S> {
        #[serde(default)]
        capabilities: S,
    }
    // A section without keys has nothing to read: skip the parse.
    if fields_of::<S>().is_empty() {
        return S::Config::default();
    }
    match cx.problems.parse::<Policy<S>>() {
        Some(policy) => policy.capabilities.apply(cx),
        None => S::Config::default(),
    }
}

/// The field names of a struct that derives `Deserialize`: what its
/// derived code passes to `deserialize_struct`.
pub(crate) fn fields_of<S: DeserializeOwned>() -> &'static [&'static str] {
    struct Fields(Option<&'static [&'static str]>);
    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("stop")
        }
    }
    impl std::error::Error for Stop {}
    impl serde::de::Error for Stop {
        fn custom<T: std::fmt::Display>(_: T) -> Self {
            Stop
        }
    }
    impl<'de> serde::Deserializer<'de> for &mut Fields {
        type Error = Stop;
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Stop> {
            self.0 = Some(fields);
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields = Fields(None);
    let _ = S::deserialize(&mut fields);
    fields.0.unwrap_or(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_belongs_to_one_section() {
        let keys = keys();
        assert!(keys.contains(&"shared_dicts") && keys.contains(&"log_level"));
        for key in keys {
            assert_eq!(
                keys.iter().filter(|k| *k == key).count(),
                1,
                "`{key}` is owned by two sections"
            );
        }
    }

    #[test]
    fn written_values_compare_by_their_text() {
        let written = Written {
            text: "https://a.example".to_string(),
            value: 1,
        };
        assert_eq!(vec![written], ["https://a.example"]);
    }
}
