//! Paths, labels and dentry prefixes.
//!
//! A path is a sequence of non-empty byte-string labels. Paths are cheap to clone and to slice:
//! they share one immutable label array and remember a window into it, because binding takes
//! suffixes (residuals) of paths at every step.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;
use std::sync::Arc;

use crate::parse::{self, ParseError};

/// One element of a [`Path`]: a non-empty string of arbitrary bytes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label(Arc<[u8]>);

/// A label was empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a path label may not be empty")]
pub struct EmptyLabel;

/// A sequence of labels, such as `/svc/web`. `/` is the empty path.
#[derive(Clone)]
pub struct Path {
    labels: Arc<[Label]>,
    start: usize,
    end: usize,
}

/// One element of a dentry [`Prefix`]: a label, or `*`, which matches any one label.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PrefixElem {
    /// Matches exactly this label.
    Label(Label),
    /// `*`: matches any single label.
    Any,
}

/// The left-hand side of a dentry: a path whose elements may be `*`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix(Arc<[PrefixElem]>);

/// True for the 69 characters a label may hold without escaping: `0-9 A-Z a-z _ : . # $ % -`.
pub fn is_label_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'.' | b'#' | b'$' | b'%' | b'-')
}

impl Label {
    /// A label holding `bytes`, which must not be empty.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, EmptyLabel> {
        let bytes = bytes.into();
        if bytes.is_empty() {
            return Err(EmptyLabel);
        }
        Ok(Label(bytes.into()))
    }

    /// A label of bytes the parser has already checked to be non-empty.
    pub(crate) fn from_plain(bytes: &[u8]) -> Self {
        debug_assert!(!bytes.is_empty());
        Label(Arc::from(bytes))
    }

    /// The label's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The label as text, when it is valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// True when every byte is a plain label character, so the label prints without escapes.
    pub fn is_plain(&self) -> bool {
        self.0.iter().all(|&b| is_label_char(b))
    }
}

impl fmt::Display for Label {
    /// Prints the label as the reference does: verbatim when every byte is a plain label
    /// character, otherwise every byte as a lowercase `\xHH` escape.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_plain() {
            // Plain label characters are ASCII, so this cannot fail.
            f.write_str(std::str::from_utf8(&self.0).map_err(|_| fmt::Error)?)
        } else {
            for b in self.0.iter() {
                write!(f, "\\x{b:02x}")?;
            }
            Ok(())
        }
    }
}

impl fmt::Debug for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Label({self})")
    }
}

impl TryFrom<&str> for Label {
    type Error = EmptyLabel;

    /// A label holding the UTF-8 bytes of `s` as they are (no escape processing).
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Label::new(s.as_bytes())
    }
}

impl Path {
    /// The empty path, `/`.
    pub fn empty() -> Self {
        Path::from_labels(Vec::new())
    }

    /// A path made of `labels`, in order.
    pub fn from_labels(labels: impl Into<Vec<Label>>) -> Self {
        let labels: Vec<Label> = labels.into();
        let end = labels.len();
        Path { labels: labels.into(), start: 0, end }
    }

    /// A path of UTF-8 labels, such as `Path::utf8(["svc", "web"])`. Fails on an empty label.
    pub fn utf8<'a>(labels: impl IntoIterator<Item = &'a str>) -> Result<Self, EmptyLabel> {
        let labels = labels.into_iter().map(Label::try_from).collect::<Result<Vec<_>, _>>()?;
        Ok(Path::from_labels(labels))
    }

    /// The labels of the path.
    pub fn labels(&self) -> &[Label] {
        &self.labels[self.start..self.end]
    }

    /// The number of labels.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// True for the empty path `/`.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The first label, if any.
    pub fn first(&self) -> Option<&Label> {
        self.labels().first()
    }

    /// True when `prefix`'s labels are the first labels of this path.
    pub fn starts_with(&self, prefix: &Path) -> bool {
        self.labels().starts_with(prefix.labels())
    }

    /// The first `n` labels (all of them if there are fewer).
    pub fn take(&self, n: usize) -> Path {
        let n = n.min(self.len());
        Path { labels: self.labels.clone(), start: self.start, end: self.start + n }
    }

    /// The path without its first `n` labels (empty if there are fewer). Shares storage.
    pub fn drop(&self, n: usize) -> Path {
        let n = n.min(self.len());
        Path { labels: self.labels.clone(), start: self.start + n, end: self.end }
    }

    /// This path followed by `other`.
    pub fn concat(&self, other: &Path) -> Path {
        if other.is_empty() {
            return self.clone();
        }
        if self.is_empty() {
            return other.clone();
        }
        let mut labels = Vec::with_capacity(self.len() + other.len());
        labels.extend_from_slice(self.labels());
        labels.extend_from_slice(other.labels());
        Path::from_labels(labels)
    }

    /// This path with `label` appended.
    pub fn push(&self, label: Label) -> Path {
        let mut labels = Vec::with_capacity(self.len() + 1);
        labels.extend_from_slice(self.labels());
        labels.push(label);
        Path::from_labels(labels)
    }

    /// The labels as UTF-8 text, or `None` if any label is not valid UTF-8.
    pub fn utf8_labels(&self) -> Option<Vec<&str>> {
        self.labels().iter().map(Label::as_str).collect()
    }
}

impl Default for Path {
    fn default() -> Self {
        Path::empty()
    }
}

impl PartialEq for Path {
    fn eq(&self, other: &Self) -> bool {
        self.labels() == other.labels()
    }
}

impl Eq for Path {}

impl Hash for Path {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.labels().hash(state)
    }
}

impl PartialOrd for Path {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Path {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.labels().cmp(other.labels())
    }
}

impl fmt::Display for Path {
    /// The canonical form: `/` for the empty path, otherwise `/` before every label.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("/");
        }
        for label in self.labels() {
            write!(f, "/{label}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Path({self})")
    }
}

impl FromStr for Path {
    type Err = ParseError;

    /// Parses a whole path, such as `/svc/web` or `/\x2f`; whitespace and comments around
    /// it are allowed.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse::parse_path(s)
    }
}

impl From<Label> for Path {
    fn from(label: Label) -> Self {
        Path::from_labels(vec![label])
    }
}

impl Prefix {
    /// A prefix made of `elems`.
    pub fn new(elems: impl Into<Vec<PrefixElem>>) -> Self {
        Prefix(elems.into().into())
    }

    /// The empty prefix `/`, which matches every path.
    pub fn empty() -> Self {
        Prefix::new(Vec::new())
    }

    /// The elements of the prefix.
    pub fn elems(&self) -> &[PrefixElem] {
        &self.0
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for the empty prefix `/`.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True when the path has at least as many labels as the prefix has elements and each
    /// element is `*` or equal to the path's label in that position.
    pub fn matches(&self, path: &Path) -> bool {
        let labels = path.labels();
        labels.len() >= self.0.len()
            && self.0.iter().zip(labels).all(|(elem, label)| match elem {
                PrefixElem::Any => true,
                PrefixElem::Label(l) => l == label,
            })
    }
}

impl From<&Path> for Prefix {
    fn from(path: &Path) -> Self {
        Prefix::new(path.labels().iter().cloned().map(PrefixElem::Label).collect::<Vec<_>>())
    }
}

impl fmt::Display for PrefixElem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrefixElem::Label(l) => l.fmt(f),
            PrefixElem::Any => f.write_str("*"),
        }
    }
}

impl fmt::Debug for PrefixElem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("/");
        }
        for elem in self.0.iter() {
            write!(f, "/{elem}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Prefix({self})")
    }
}

impl FromStr for Prefix {
    type Err = ParseError;

    /// Parses a whole dentry prefix, such as `/svc/*/web`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse::parse_prefix(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Path {
        s.parse().unwrap()
    }

    #[test]
    fn labels_escape_whole_label_when_any_byte_is_not_plain() {
        assert_eq!(Label::new(*b"a/b").unwrap().to_string(), r"\x61\x2f\x62");
        assert_eq!(Label::new(*b"ok").unwrap().to_string(), "ok");
        assert_eq!(Label::new(Vec::new()), Err(EmptyLabel));
    }

    #[test]
    fn slicing_shares_storage_and_compares_by_visible_labels() {
        let path = p("/a/b/c/d");
        assert_eq!(path.drop(2), p("/c/d"));
        assert_eq!(path.take(2), p("/a/b"));
        assert_eq!(path.drop(1).take(2), p("/b/c"));
        assert_eq!(path.drop(9), Path::empty());
        assert_eq!(path.drop(4).to_string(), "/");
        assert!(path.starts_with(&p("/a/b")));
        assert!(!path.starts_with(&p("/a/c")));
        assert_eq!(p("/a").concat(&p("/b/c")), p("/a/b/c"));
        let mut h1 = std::collections::hash_map::DefaultHasher::new();
        let mut h2 = std::collections::hash_map::DefaultHasher::new();
        path.drop(2).hash(&mut h1);
        p("/c/d").hash(&mut h2);
        assert_eq!(h1.finish(), h2.finish());
    }

    #[test]
    fn prefixes_match_whole_labels_and_wildcards() {
        let prefix: Prefix = "/a/*/c".parse().unwrap();
        assert!(prefix.matches(&p("/a/b/c/e")));
        assert!(!prefix.matches(&p("/a/b")));
        assert!(!prefix.matches(&p("/a/b/d")));
        let s: Prefix = "/s".parse().unwrap();
        assert!(!s.matches(&p("/s#/foo")));
        assert!(Prefix::empty().matches(&Path::empty()));
    }
}
