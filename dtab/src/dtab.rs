//! Dentries and delegation tables, and one-step lookup.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::parse::{self, ParseError};
use crate::path::{Label, Path, Prefix, PrefixElem};
use crate::tree::NameTree;

/// One delegation rule: paths matching `prefix` are rewritten to `dst`, with the rest of the
/// path appended to every leaf.
///
/// Cloning is cheap (the destination is shared), so that every node of a delegation tree can
/// name the dentry that produced it without copying it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Dentry {
    prefix: Prefix,
    dst: Arc<NameTree<Path>>,
}

/// An ordered list of dentries. Later dentries take precedence, so appending overrides.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Dtab(Arc<[Dentry]>);

impl Dentry {
    /// A dentry rewriting `prefix` to `dst`.
    pub fn new(prefix: Prefix, dst: NameTree<Path>) -> Self {
        Dentry { prefix, dst: Arc::new(dst) }
    }

    /// The placeholder dentry Finagle uses at the root of a delegation tree: a prefix made of
    /// the single label `/` (which no parsed prefix can hold) and a negative destination.
    pub fn nop() -> Self {
        let slash = Label::new(*b"/").unwrap_or_else(|_| unreachable!("non-empty"));
        Dentry { prefix: Prefix::new(vec![PrefixElem::Label(slash)]), dst: Arc::new(NameTree::Neg) }
    }

    /// True for [`Dentry::nop`].
    pub fn is_nop(&self) -> bool {
        matches!(*self.dst, NameTree::Neg)
            && matches!(self.prefix.elems(), [PrefixElem::Label(label)] if label.as_bytes() == b"/")
    }

    /// The left-hand side.
    pub fn prefix(&self) -> &Prefix {
        &self.prefix
    }

    /// The right-hand side.
    pub fn dst(&self) -> &NameTree<Path> {
        &self.dst
    }

    /// True when `other` is this very dentry (a clone of it), not merely an equal one. Cheap,
    /// where equality compares whole destinations.
    pub fn is_same(&self, other: &Dentry) -> bool {
        Arc::ptr_eq(&self.dst, &other.dst) && self.prefix == other.prefix
    }

    /// An identity for this dentry and its clones, for memoising work per dentry.
    pub(crate) fn identity(&self) -> usize {
        Arc::as_ptr(&self.dst) as usize
    }

    /// When the prefix matches `path`, the destination with the unmatched rest of `path`
    /// appended to every leaf.
    pub fn rewrite(&self, path: &Path) -> Option<NameTree<Path>> {
        if !self.prefix.matches(path) {
            return None;
        }
        let residual = path.drop(self.prefix.len());
        Some(self.dst.map_ref(&mut |leaf| leaf.concat(&residual)))
    }
}

impl fmt::Display for Dentry {
    /// `prefix=>tree`, with no spaces around the arrow.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}=>{}", self.prefix, self.dst)
    }
}

impl fmt::Debug for Dentry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dentry({self})")
    }
}

impl FromStr for Dentry {
    type Err = ParseError;

    /// Parses one dentry, such as `/svc => /#/io.l5d.fs`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse::parse_dentry(s)
    }
}

impl Dtab {
    /// A dtab of `dentries`, in order.
    pub fn new(dentries: impl Into<Vec<Dentry>>) -> Self {
        Dtab(dentries.into().into())
    }

    /// The empty dtab.
    pub fn empty() -> Self {
        Dtab::default()
    }

    /// The dentries, in order.
    pub fn dentries(&self) -> &[Dentry] {
        &self.0
    }

    /// An iterator over the dentries.
    pub fn iter(&self) -> std::slice::Iter<'_, Dentry> {
        self.0.iter()
    }

    /// The number of dentries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no dentries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// This dtab followed by `other` (`self ++ other`): `other`'s dentries take precedence.
    pub fn concat(&self, other: &Dtab) -> Dtab {
        if other.is_empty() {
            return self.clone();
        }
        if self.is_empty() {
            return other.clone();
        }
        Dtab(self.0.iter().chain(other.0.iter()).cloned().collect())
    }

    /// This dtab with `dentry` appended.
    pub fn push(&self, dentry: Dentry) -> Dtab {
        Dtab(self.0.iter().cloned().chain(std::iter::once(dentry)).collect())
    }

    /// This dtab without the leading dentries `prefix`, when they are exactly its first ones.
    pub fn strip_prefix(&self, prefix: &Dtab) -> Option<Dtab> {
        self.0.starts_with(&prefix.0).then(|| Dtab(self.0[prefix.len()..].into()))
    }

    /// One rewriting step: every dentry whose prefix matches `path`, latest first, rewritten.
    /// No match gives `Neg`, one match its tree, several an `Alt` of them. Not simplified.
    pub fn lookup(&self, path: &Path) -> NameTree<Path> {
        let mut matches: Vec<NameTree<Path>> = self.0.iter().rev().filter_map(|d| d.rewrite(path)).collect();
        match matches.len() {
            0 => NameTree::Neg,
            1 => matches.pop().unwrap_or(NameTree::Neg),
            _ => NameTree::Alt(matches),
        }
    }

    /// The dtab with every destination simplified, and dentries whose destination is then
    /// negative removed.
    pub fn simplified(&self) -> Dtab {
        Dtab(
            self.0
                .iter()
                .filter_map(|d| match d.dst.simplified() {
                    NameTree::Neg => None,
                    dst => Some(Dentry::new(d.prefix.clone(), dst)),
                })
                .collect(),
        )
    }
}

impl fmt::Display for Dtab {
    /// The canonical form: dentries joined by `;`, no spaces, no trailing `;`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, dentry) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(";")?;
            }
            dentry.fmt(f)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Dtab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dtab({self})")
    }
}

impl FromStr for Dtab {
    type Err = ParseError;

    /// Parses a whole dtab: dentries separated by `;`, with one optional trailing `;`,
    /// whitespace and `#` comments.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse::parse_dtab(s)
    }
}

impl<'a> IntoIterator for &'a Dtab {
    type Item = &'a Dentry;
    type IntoIter = std::slice::Iter<'a, Dentry>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl FromIterator<Dentry> for Dtab {
    fn from_iter<I: IntoIterator<Item = Dentry>>(iter: I) -> Self {
        Dtab(iter.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Dtab {
        s.parse().unwrap()
    }

    #[test]
    fn later_dentries_win_and_combine_into_an_alternative() {
        let dtab = d("/a/x=>/c;/a=>/b");
        assert_eq!(dtab.lookup(&"/a/x/y".parse().unwrap()).to_string(), "/b/x/y | /c/y");
        assert_eq!(dtab.lookup(&"/z".parse().unwrap()), NameTree::Neg);
    }

    #[test]
    fn concatenation_appends_and_strip_prefix_reverses_it() {
        let base = d("/a=>/b");
        let over = d("/a=>/c");
        let both = base.concat(&over);
        assert_eq!(both.to_string(), "/a=>/b;/a=>/c");
        assert_eq!(both.strip_prefix(&base), Some(over));
        assert_eq!(d("/x=>/y").strip_prefix(&base), None);
    }

    #[test]
    fn nop_prints_as_the_reference_does() {
        assert_eq!(Dentry::nop().to_string(), r"/\x2f=>~");
        assert!(Dentry::nop().is_nop());
    }
}
