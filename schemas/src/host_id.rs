//! The host id: one NATS subject token, so it can be embedded in `muster.<kind>.<host>` without escaping.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest host id accepted. Long enough for any real short hostname plus a cluster suffix; short enough to keep
/// subjects (and the KV keys and stream subjects derived from them) small.
pub const MAX_HOST_ID_LEN: usize = 64;

/// A validated host id: 1–64 characters of `[A-Za-z0-9_-]`.
///
/// Dots, wildcards and spaces would split or widen a subject, so they are never passed through: use
/// [`HostId::from_hostname`] to encode a DNS name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostId(String);

/// Why a string is not a host id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidHostId {
    /// The id was empty.
    #[error("host id is empty")]
    Empty,
    /// The id was longer than [`MAX_HOST_ID_LEN`].
    #[error("host id is {0} characters long; at most {MAX_HOST_ID_LEN} are allowed")]
    TooLong(usize),
    /// The id held a character outside `[A-Za-z0-9_-]`.
    #[error("host id {id:?} contains {ch:?}; only letters, digits, '-' and '_' are allowed (encode dots with from_hostname)")]
    BadChar {
        /// The rejected id (truncated to a sane length for logging).
        id: String,
        /// The first offending character.
        ch: char,
    },
}

impl HostId {
    /// Validates `s` as a host id.
    pub fn new(s: impl Into<String>) -> Result<Self, InvalidHostId> {
        let s = s.into();
        if s.is_empty() {
            return Err(InvalidHostId::Empty);
        }
        if s.len() > MAX_HOST_ID_LEN {
            return Err(InvalidHostId::TooLong(s.len()));
        }
        if let Some(ch) = s.chars().find(|c| !is_token_char(*c)) {
            let id: String = s.chars().take(80).collect();
            return Err(InvalidHostId::BadChar { id, ch });
        }
        Ok(Self(s))
    }

    /// Encodes a hostname (possibly a FQDN) into a host id.
    ///
    /// `.` becomes `_`, which DNS names cannot contain, so distinct valid hostnames map to distinct ids. Letters
    /// are lower-cased (DNS is case-insensitive); any other character becomes `-`. A name longer than
    /// [`MAX_HOST_ID_LEN`] keeps its head and gets a hash of the whole name as a suffix, so it stays unique.
    pub fn from_hostname(name: &str) -> Result<Self, InvalidHostId> {
        let mut out: String = name
            .trim()
            .trim_end_matches('.')
            .chars()
            .map(|c| match c {
                '.' => '_',
                c if c.is_ascii_alphanumeric() || c == '-' || c == '_' => c.to_ascii_lowercase(),
                _ => '-',
            })
            .collect();
        if out.len() > MAX_HOST_ID_LEN {
            let hash = fnv1a(name.as_bytes());
            out.truncate(MAX_HOST_ID_LEN - 17);
            out.push('-');
            out.push_str(&format!("{hash:016x}"));
        }
        Self::new(out)
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// FNV-1a: a stable hash that needs no dependency; only used to keep long hostnames unique.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for HostId {
    type Error = InvalidHostId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<HostId> for String {
    fn from(h: HostId) -> Self {
        h.0
    }
}

impl std::str::FromStr for HostId {
    type Err = InvalidHostId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_token_characters() {
        assert_eq!(HostId::new("web-01_a").unwrap().as_str(), "web-01_a");
    }

    #[test]
    fn rejects_subject_breaking_characters() {
        for bad in ["a.b", "a*", "a>", "a b", "ä", ""] {
            assert!(HostId::new(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(HostId::new("x".repeat(65)), Err(InvalidHostId::TooLong(65)));
    }

    #[test]
    fn hostname_dots_are_encoded_not_passed_through() {
        assert_eq!(HostId::from_hostname("Node1.Example.com.").unwrap().as_str(), "node1_example_com");
    }

    #[test]
    fn long_hostnames_stay_unique_and_valid() {
        let a = HostId::from_hostname(&format!("{}.a", "x".repeat(80))).unwrap();
        let b = HostId::from_hostname(&format!("{}.b", "x".repeat(80))).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), MAX_HOST_ID_LEN);
    }

    #[test]
    fn deserialization_validates() {
        let bad = rmp_serde::to_vec(&"a.b").unwrap();
        assert!(rmp_serde::from_slice::<HostId>(&bad).is_err());
    }
}
