//! Namespace names: the key under which a store keeps one dtab.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The longest namespace name, in bytes. It matches the longest Kubernetes object name, so
/// that every namespace can become a `DTab` object.
pub const MAX_NAMESPACE_LEN: usize = 253;

/// A namespace name: 1 to 253 characters from `[A-Za-z0-9_.-]`.
///
/// The alphabet keeps names safe as file names (`<namespace>.dtab`), as etcd key segments
/// (it never holds `/`, so history keys can live under `<prefix><namespace>/`) and in URLs.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Namespace(Arc<str>);

/// A namespace name outside the allowed alphabet or length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid namespace name {name:?}: {reason}")]
pub struct InvalidNamespace {
    name: String,
    reason: &'static str,
}

impl Namespace {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for the characters a namespace name may hold.
    pub fn is_name_char(c: char) -> bool {
        c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
    }
}

impl InvalidNamespace {
    /// The rejected name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl FromStr for Namespace {
    type Err = InvalidNamespace;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let reason = if s.is_empty() {
            Some("it is empty")
        } else if s.len() > MAX_NAMESPACE_LEN {
            Some("it is longer than 253 characters")
        } else if !s.chars().all(Namespace::is_name_char) {
            Some("only letters, digits, '_', '.' and '-' are allowed")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(InvalidNamespace { name: s.to_string(), reason }),
            None => Ok(Namespace(s.into())),
        }
    }
}

impl TryFrom<&str> for Namespace {
    type Error = InvalidNamespace;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl TryFrom<String> for Namespace {
    type Error = InvalidNamespace;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Namespace> for String {
    fn from(ns: Namespace) -> Self {
        ns.0.to_string()
    }
}

impl AsRef<str> for Namespace {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Namespace({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        for name in ["default", "a", "A-Z_0.9", "..", &"x".repeat(MAX_NAMESPACE_LEN)] {
            let ns: Namespace = name.parse().unwrap();
            assert_eq!(ns.as_str(), name);
            assert_eq!(ns.to_string(), name);
        }
    }

    #[test]
    fn rejects_everything_else_with_a_reason() {
        for (name, reason) in [
            ("", "empty"),
            ("a/b", "only letters"),
            ("a b", "only letters"),
            ("café", "only letters"),
            ("ns:1", "only letters"),
            (&"x".repeat(MAX_NAMESPACE_LEN + 1), "longer than 253"),
        ] {
            let err = name.parse::<Namespace>().unwrap_err();
            assert_eq!(err.name(), name);
            assert!(err.to_string().contains(reason), "{err}");
        }
    }

    #[test]
    fn orders_by_name_and_round_trips_through_serde() {
        let mut names: Vec<Namespace> = ["b", "a", "C"].iter().map(|n| n.parse().unwrap()).collect();
        names.sort();
        assert_eq!(names.iter().map(Namespace::as_str).collect::<Vec<_>>(), ["C", "a", "b"]);
        let json = serde_json::to_string(&names[1]).unwrap();
        assert_eq!(json, "\"a\"");
        assert_eq!(serde_json::from_str::<Namespace>(&json).unwrap(), names[1]);
        assert!(serde_json::from_str::<Namespace>("\"a/b\"").is_err());
    }
}
