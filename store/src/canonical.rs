//! How dtabs and history entries are written to backing data, and read back.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use waymark_dtab::Dtab;

use crate::error::StoreError;
use crate::store::{ChangeMeta, HistoryEntry, Version};

/// The longest canonical dtab text a store accepts, in bytes.
///
/// An etcd write carries the text twice (the value and its history entry) and etcd refuses
/// requests over 1.5 MiB by default; a Kubernetes object must fit in 1 MiB. Half a MiB keeps
/// every backend well inside its limits, and is far beyond any dtab written by hand.
pub const MAX_DTAB_BYTES: usize = 512 * 1024;

/// One history entry as a store writes it to its backing data: a file store's history log,
/// an etcd history key, a Kubernetes history object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRecord {
    /// The version the write produced, when the backend cannot derive it from elsewhere (etcd
    /// uses the key's create revision instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The canonical dtab text, or `None` for a deletion.
    pub dtab: Option<String>,
    /// When, in RFC 3339 (UTC).
    pub at: String,
    /// Who made the change, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Why, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The text a store writes for `dtab`, and the dtab that text stands for: the canonical form,
/// within [`MAX_DTAB_BYTES`].
///
/// The canonical form prints weights with two decimals, as the reference does, so it may
/// stand for a slightly different dtab (`0.333` is kept as `0.33`, `1.004` as `1.00`, which
/// then reads as the default weight and prints without one). The store keeps and serves the
/// dtab its text stands for, printed again until it is stable, so that what is stored is what
/// every reader gets back, byte for byte.
///
/// A parsed [`Dtab`] always has a text form, so [`StoreError::Invalid`] here means a dtab
/// built in code that has none (such as an empty alternative), or one too large to store.
pub fn canonical_text(dtab: &Dtab) -> Result<(String, Dtab), StoreError> {
    let mut text = dtab.to_string();
    // Two rounds reach the fixpoint: after one, every weight has at most two decimals.
    for _ in 0..2 {
        let read_back = text
            .parse::<Dtab>()
            .map_err(|e| StoreError::Invalid(format!("the dtab's canonical text {text:?} does not parse: {e}")))?;
        let again = read_back.to_string();
        if again == text {
            if text.len() > MAX_DTAB_BYTES {
                return Err(StoreError::Invalid(format!(
                    "the dtab's canonical text is {} bytes; the limit is {MAX_DTAB_BYTES}",
                    text.len()
                )));
            }
            return Ok((text, read_back));
        }
        text = again;
    }
    Err(StoreError::Invalid(format!("the dtab's canonical text {text:?} does not settle")))
}

/// Parses stored dtab text, which may have been edited by hand.
pub fn parse_stored(bytes: &[u8]) -> Result<Dtab, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    text.parse::<Dtab>().map_err(|e| e.to_string())
}

impl HistoryRecord {
    /// A record of a change made now-ish, at `at`.
    pub fn new(version: Option<&Version>, dtab: Option<&str>, at: SystemTime, meta: &ChangeMeta) -> Self {
        HistoryRecord {
            version: version.and_then(|v| v.as_text()).map(str::to_string),
            dtab: dtab.map(str::to_string),
            at: humantime::format_rfc3339_millis(at).to_string(),
            author: meta.author.clone(),
            message: meta.message.clone(),
        }
    }

    /// The record as one line of JSON.
    pub fn to_json(&self) -> String {
        // A struct of strings always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A record read back from JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }

    /// The entry this record describes; `version` overrides the stored one.
    pub fn into_entry(self, version: Option<Version>) -> Result<HistoryEntry, String> {
        let version = version
            .or_else(|| self.version.as_deref().map(Version::from_bytes))
            .ok_or("the history record has no version")?;
        let dtab = self.dtab.as_deref().map(|text| parse_stored(text.as_bytes())).transpose()?;
        let at = humantime::parse_rfc3339(&self.at)
            .or_else(|_| humantime::parse_rfc3339_weak(&self.at))
            .unwrap_or(UNIX_EPOCH + Duration::ZERO);
        Ok(HistoryEntry { version, dtab, at, author: self.author, message: self.message })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_kept_as_the_canonical_form_stands_for_them() {
        let dtab: Dtab = "/a=>0.333*/b & 1.004*/c & /d".parse().unwrap();
        let (text, stored) = canonical_text(&dtab).unwrap();
        assert_eq!(text, "/a=>0.33*/b & /c & /d");
        assert_eq!(stored, text.parse::<Dtab>().unwrap());
        assert_eq!(stored.to_string(), text);
    }

    #[test]
    fn canonical_text_is_the_printed_form() {
        let dtab: Dtab = "/svc => /#/io.l5d.fs ; # comment\n/svc/web => 0.9*/a & 0.1*/b;".parse().unwrap();
        assert_eq!(canonical_text(&dtab).unwrap().0, "/svc=>/#/io.l5d.fs;/svc/web=>0.90*/a & 0.10*/b");
        assert_eq!(canonical_text(&Dtab::empty()).unwrap().0, "");
    }

    #[test]
    fn oversized_dtabs_are_invalid() {
        let dentry = format!("/{0}=>/{0}", "a".repeat(1000));
        let big: Dtab = vec![dentry; MAX_DTAB_BYTES / 2000 + 1].join(";").parse().unwrap();
        match canonical_text(&big) {
            Err(StoreError::Invalid(msg)) => assert!(msg.contains("the limit is"), "{msg}"),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn history_records_round_trip() {
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let meta = ChangeMeta::by("alice").with_message("canary");
        let record = HistoryRecord::new(Some(&Version::from_bytes("abc")), Some("/a=>/b"), at, &meta);
        let json = record.to_json();
        assert_eq!(
            json,
            r#"{"version":"abc","dtab":"/a=>/b","at":"2023-11-14T22:13:20.123Z","author":"alice","message":"canary"}"#
        );
        let entry = HistoryRecord::from_json(json.as_bytes()).unwrap().into_entry(None).unwrap();
        assert_eq!(entry.version, Version::from_bytes("abc"));
        assert_eq!(entry.dtab, Some("/a=>/b".parse().unwrap()));
        assert_eq!(entry.at, at);
        assert_eq!(entry.author.as_deref(), Some("alice"));
        assert_eq!(entry.message.as_deref(), Some("canary"));
    }
}
