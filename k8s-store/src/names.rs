//! Dtab namespaces as Kubernetes object names.
//!
//! A dtab namespace that is a valid object name (a DNS subdomain: lower-case letters, digits,
//! `-` and `.`) is the `DTab` object's name, as in namerd, so namerd's objects carry over. Any
//! other (`Prod`, `team_a`) gets a name made from it and a digest of it (`prod-x1f2e...`),
//! and its real name in the annotation [`NAMESPACE_ANNOTATION`], so that every namespace the
//! store accepts can be kept.

use sha2::{Digest, Sha256};
use waymark_store::Namespace;

/// The annotation holding the dtab namespace of an object whose name is not the namespace.
pub const NAMESPACE_ANNOTATION: &str = "waymark.io/dtab-namespace";

/// The longest object name.
const MAX_NAME: usize = 253;

/// The object name for a dtab namespace, and whether it needs the annotation.
pub(crate) fn object_name(ns: &Namespace) -> (String, bool) {
    if is_object_name(ns.as_str()) {
        return (ns.as_str().to_string(), false);
    }
    (derived(ns.as_str(), ""), true)
}

/// The name of the ConfigMap holding a namespace's history.
pub(crate) fn history_name(ns: &Namespace) -> String {
    let (object, _) = object_name(ns);
    let name = format!("{object}.dtab-history");
    if name.len() <= MAX_NAME { name } else { derived(&object, ".dtab-history") }
}

/// A readable, valid object name for `text`: its characters made valid, cut short, then a
/// digest of `text`, then `suffix`.
fn derived(text: &str, suffix: &str) -> String {
    let lowered: String = text
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '.') => c,
            _ => '-',
        })
        .collect();
    let labels: Vec<&str> = lowered.split('.').map(|l| l.trim_matches('-')).filter(|l| !l.is_empty()).collect();
    let mut readable = labels.join(".");
    readable.truncate(MAX_NAME - 20 - suffix.len());
    let readable = readable.trim_end_matches(['-', '.']);
    let digest = Sha256::digest(text.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let readable = if readable.is_empty() { "ns" } else { readable };
    format!("{readable}-x{hex}{suffix}")
}

/// Whether `name` is a valid object name (a DNS-1123 subdomain).
pub(crate) fn is_object_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The dtab namespace an object stands for: its annotation, else its name.
pub(crate) fn namespace_of(name: &str, annotation: Option<&str>) -> Option<Namespace> {
    annotation.unwrap_or(name).parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(s: &str) -> Namespace {
        s.parse().unwrap()
    }

    #[test]
    fn valid_object_names_are_kept_as_namerd_kept_them() {
        for name in ["default", "a-b", "a.b", "internal-v2"] {
            assert_eq!(object_name(&ns(name)), (name.to_string(), false));
        }
    }

    #[test]
    fn other_names_are_derived_valid_distinct_and_annotated() {
        let names: Vec<String> =
            ["B", "b", "a_b", "a-b", "_", "-x-", "a..b", ".a"].iter().map(|n| object_name(&ns(n)).0).collect();
        assert!(names.iter().all(|n| is_object_name(n)), "{names:?}");
        let distinct: std::collections::BTreeSet<&String> = names.iter().collect();
        assert_eq!(distinct.len(), names.len(), "{names:?}");
        assert!(object_name(&ns("Prod")).0.starts_with("prod-x"));
        assert!(object_name(&ns("Prod")).1);
        let long = ns(&"A".repeat(253));
        let (name, _) = object_name(&long);
        assert!(is_object_name(&name) && name.len() <= 253, "{name}");
        let history = history_name(&long);
        assert!(is_object_name(&history) && history.ends_with(".dtab-history"), "{history}");
        assert_eq!(namespace_of(&name, Some(long.as_str())), Some(long));
        assert_eq!(namespace_of("web", None), Some(ns("web")));
    }
}
