//! Name trees: the right-hand side of a dentry, and the result of binding.

use std::collections::BTreeSet;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use crate::parse::{self, ParseError};
use crate::path::Path;

/// A tree of names, combined by fail-over (`|`) and weighted load balancing (`&`).
///
/// The variants are public so that trees can be matched; the parser only produces `Alt` and
/// `Union` nodes with two or more children, while programs may build any shape.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum NameTree<T> {
    /// A name: a path before binding, a bound name after.
    Leaf(T),
    /// Fail-over: the first alternative that is not negative (`a | b`).
    Alt(Vec<NameTree<T>>),
    /// Weighted load balancing over every branch that is not negative (`2*a & b`).
    Union(Vec<Weighted<T>>),
    /// `~`: no such name here; an enclosing `Alt` tries its next alternative.
    Neg,
    /// `!`: stop, and fail.
    Fail,
    /// `$`: the name exists but has no endpoints; stops fall-through like a leaf.
    Empty,
}

/// One branch of a [`NameTree::Union`].
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Weighted<T> {
    /// The branch's share of traffic, relative to its siblings.
    pub weight: Weight,
    /// The branch.
    pub tree: NameTree<T>,
}

/// A union branch weight: a finite, non-negative number. The default is 1.
#[derive(Clone, Copy, PartialEq, PartialOrd)]
pub struct Weight(f64);

/// A weight was negative, infinite or not a number.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("a weight must be a finite number of at least 0, not {0}")]
pub struct InvalidWeight(pub f64);

/// The result of [`NameTree::eval`] before it is reduced to an `Option`: Finagle's evaluation
/// tells a negative result from a failed one, because only failure stops an `Alt`.
enum Eval<T> {
    Neg,
    Fail,
    Set(BTreeSet<T>),
}

impl Weight {
    /// The weight of a branch written without one.
    pub const DEFAULT: Weight = Weight(1.0);

    /// A weight of `w`, which must be finite and not negative.
    pub fn new(w: f64) -> Result<Self, InvalidWeight> {
        if w.is_finite() && w >= 0.0 {
            // Normalise -0.0, so that equal weights hash equally.
            Ok(Weight(if w == 0.0 { 0.0 } else { w }))
        } else {
            Err(InvalidWeight(w))
        }
    }

    /// The weight as a number.
    pub fn get(self) -> f64 {
        self.0
    }
}

impl Default for Weight {
    fn default() -> Self {
        Weight::DEFAULT
    }
}

impl Eq for Weight {}

impl Hash for Weight {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state)
    }
}

impl fmt::Display for Weight {
    /// Java's `%.2f`, as the reference prints weights: round half up on the shortest decimal
    /// form of the number, and always a `.`. One exception keeps what a dtab means when it is
    /// read back: a weight above zero that `%.2f` would print as `0.00` (which reads back as a
    /// branch that never gets traffic) prints in its shortest exact decimal form instead,
    /// such as `0.001`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let two = format_two_decimals(self.0);
        if self.0 > 0.0 && two == "0.00" {
            // Never in exponent form; below 0.005 it always has more than two decimals.
            return write!(f, "{}", self.0);
        }
        f.write_str(&two)
    }
}

impl fmt::Debug for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl TryFrom<f64> for Weight {
    type Error = InvalidWeight;

    fn try_from(w: f64) -> Result<Self, Self::Error> {
        Weight::new(w)
    }
}

/// Formats a finite, non-negative number with two decimals, rounding half up on its shortest
/// round-trip decimal representation (what Java's `%.2f` does, and not IEEE rounding).
fn format_two_decimals(w: f64) -> String {
    // Rust prints the shortest representation that round-trips, never in exponent form.
    let shortest = format!("{w}");
    let (int_part, frac_part) = shortest.split_once('.').unwrap_or((&shortest, ""));
    let mut digits: Vec<u8> =
        int_part.bytes().chain(frac_part.bytes().chain(std::iter::repeat(b'0')).take(2)).collect();
    let round_up = frac_part.as_bytes().get(2).is_some_and(|&d| d >= b'5');
    if round_up {
        let mut i = digits.len();
        loop {
            if i == 0 {
                digits.insert(0, b'1');
                break;
            }
            i -= 1;
            if digits[i] == b'9' {
                digits[i] = b'0';
            } else {
                digits[i] += 1;
                break;
            }
        }
    }
    let split = digits.len() - 2;
    let mut out = String::with_capacity(digits.len() + 1);
    out.extend(digits[..split].iter().map(|&d| d as char));
    out.push('.');
    out.extend(digits[split..].iter().map(|&d| d as char));
    out
}

impl<T> Weighted<T> {
    /// A branch of `tree` with weight `weight`.
    pub fn new(weight: Weight, tree: NameTree<T>) -> Self {
        Weighted { weight, tree }
    }
}

impl<T> NameTree<T> {
    /// A union of `(weight, tree)` branches.
    pub fn union(branches: impl IntoIterator<Item = (Weight, NameTree<T>)>) -> Self {
        NameTree::Union(branches.into_iter().map(|(weight, tree)| Weighted { weight, tree }).collect())
    }

    /// Applies `f` to every leaf, keeping the shape.
    pub fn map<U>(self, f: &mut impl FnMut(T) -> U) -> NameTree<U> {
        match self {
            NameTree::Leaf(t) => NameTree::Leaf(f(t)),
            NameTree::Alt(trees) => NameTree::Alt(trees.into_iter().map(|t| t.map(f)).collect()),
            NameTree::Union(branches) => NameTree::Union(
                branches.into_iter().map(|w| Weighted { weight: w.weight, tree: w.tree.map(f) }).collect(),
            ),
            NameTree::Neg => NameTree::Neg,
            NameTree::Fail => NameTree::Fail,
            NameTree::Empty => NameTree::Empty,
        }
    }

    /// Applies `f` to a reference of every leaf, keeping the shape.
    pub fn map_ref<U>(&self, f: &mut impl FnMut(&T) -> U) -> NameTree<U> {
        match self {
            NameTree::Leaf(t) => NameTree::Leaf(f(t)),
            NameTree::Alt(trees) => NameTree::Alt(trees.iter().map(|t| t.map_ref(f)).collect()),
            NameTree::Union(branches) => NameTree::Union(
                branches.iter().map(|w| Weighted { weight: w.weight, tree: w.tree.map_ref(f) }).collect(),
            ),
            NameTree::Neg => NameTree::Neg,
            NameTree::Fail => NameTree::Fail,
            NameTree::Empty => NameTree::Empty,
        }
    }

    /// Every leaf, in tree order.
    pub fn leaves(&self) -> Vec<&T> {
        let mut out = Vec::new();
        self.collect_leaves(&mut out);
        out
    }

    fn collect_leaves<'a>(&'a self, out: &mut Vec<&'a T>) {
        match self {
            NameTree::Leaf(t) => out.push(t),
            NameTree::Alt(trees) => trees.iter().for_each(|t| t.collect_leaves(out)),
            NameTree::Union(branches) => branches.iter().for_each(|w| w.tree.collect_leaves(out)),
            NameTree::Neg | NameTree::Fail | NameTree::Empty => {}
        }
    }

    /// An evaluation-equivalent tree with negative branches removed, failures propagated and
    /// one-child nodes unwrapped, as Finagle's `simplified`. Idempotent.
    pub fn simplified(&self) -> NameTree<T>
    where
        T: Clone,
    {
        match self {
            NameTree::Alt(trees) => match trees.as_slice() {
                [] => NameTree::Neg,
                [only] => only.simplified(),
                _ => {
                    let mut kept = Vec::with_capacity(trees.len());
                    for tree in trees {
                        match tree.simplified() {
                            NameTree::Neg => {}
                            NameTree::Fail => {
                                // A failure ends fail-over: later alternatives are unreachable.
                                kept.push(NameTree::Fail);
                                break;
                            }
                            other => kept.push(other),
                        }
                    }
                    match kept.len() {
                        0 => NameTree::Neg,
                        1 => kept.pop().unwrap_or(NameTree::Neg),
                        _ => NameTree::Alt(kept),
                    }
                }
            },
            NameTree::Union(branches) => match branches.as_slice() {
                [] => NameTree::Neg,
                [only] => only.tree.simplified(),
                _ => {
                    let mut kept: Vec<Weighted<T>> = branches
                        .iter()
                        .filter_map(|w| match w.tree.simplified() {
                            // A union balances over the branches that can take traffic.
                            NameTree::Neg | NameTree::Fail => None,
                            tree => Some(Weighted { weight: w.weight, tree }),
                        })
                        .collect();
                    match kept.len() {
                        0 => NameTree::Neg,
                        1 => kept.pop().map(|w| w.tree).unwrap_or(NameTree::Neg),
                        _ => NameTree::Union(kept),
                    }
                }
            },
            other => other.clone(),
        }
    }

    /// Evaluates the tree to the set of leaves it denotes, ignoring weights: `None` when it is
    /// negative or failed, `Some` (possibly empty, for `$`) otherwise.
    pub fn eval(&self) -> Option<BTreeSet<T>>
    where
        T: Ord + Clone,
    {
        match self.eval3() {
            Eval::Set(set) => Some(set),
            Eval::Neg | Eval::Fail => None,
        }
    }

    fn eval3(&self) -> Eval<T>
    where
        T: Ord + Clone,
    {
        match self {
            NameTree::Neg => Eval::Neg,
            NameTree::Fail => Eval::Fail,
            NameTree::Empty => Eval::Set(BTreeSet::new()),
            NameTree::Leaf(t) => Eval::Set(BTreeSet::from([t.clone()])),
            NameTree::Alt(trees) => {
                for tree in trees {
                    match tree.eval3() {
                        Eval::Neg => continue,
                        other => return other,
                    }
                }
                Eval::Neg
            }
            NameTree::Union(branches) => {
                if let [only] = branches.as_slice() {
                    return only.tree.eval3();
                }
                let mut union: Option<BTreeSet<T>> = None;
                for branch in branches {
                    if let Eval::Set(set) = branch.tree.eval3() {
                        union.get_or_insert_with(BTreeSet::new).extend(set);
                    }
                }
                union.map_or(Eval::Neg, Eval::Set)
            }
        }
    }

    /// The tree with `;`-free, unwrapped one-child nodes, for printing: a one-element `Alt`
    /// or `Union` prints as its only child.
    fn unwrapped(&self) -> &NameTree<T> {
        let mut tree = self;
        loop {
            match tree {
                NameTree::Alt(trees) if trees.len() == 1 => tree = &trees[0],
                NameTree::Union(branches) if branches.len() == 1 => tree = &branches[0].tree,
                _ => return tree,
            }
        }
    }
}

impl<T: fmt::Display> NameTree<T> {
    /// Top level: alternatives are joined by ` | ` without parentheses.
    fn show(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.unwrapped() {
            NameTree::Alt(trees) => {
                for (i, tree) in trees.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" | ")?;
                    }
                    tree.show_union_level(f)?;
                }
                Ok(())
            }
            tree => tree.show_union_level(f),
        }
    }

    /// Inside an alternative: union branches are joined by ` & `, weights other than 1 are
    /// printed as `0.30*`.
    fn show_union_level(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.unwrapped() {
            NameTree::Union(branches) => {
                for (i, branch) in branches.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" & ")?;
                    }
                    if branch.weight != Weight::DEFAULT {
                        write!(f, "{}*", branch.weight)?;
                    }
                    branch.tree.show_simple(f)?;
                }
                Ok(())
            }
            tree => tree.show_simple(f),
        }
    }

    /// A single term: compound trees are parenthesised.
    fn show_simple(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.unwrapped() {
            tree @ (NameTree::Alt(_) | NameTree::Union(_)) => {
                f.write_str("(")?;
                tree.show(f)?;
                f.write_str(")")
            }
            NameTree::Leaf(t) => t.fmt(f),
            NameTree::Neg => f.write_str("~"),
            NameTree::Fail => f.write_str("!"),
            NameTree::Empty => f.write_str("$"),
        }
    }
}

impl<T: fmt::Display> fmt::Display for NameTree<T> {
    /// The canonical form, byte for byte as Finagle's `show`: `/a | 0.30*/b & /c`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.show(f)
    }
}

impl<T: fmt::Debug> fmt::Debug for NameTree<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameTree::Leaf(t) => write!(f, "Leaf({t:?})"),
            NameTree::Alt(trees) => f.debug_tuple("Alt").field(trees).finish(),
            NameTree::Union(branches) => f.debug_tuple("Union").field(branches).finish(),
            NameTree::Neg => f.write_str("Neg"),
            NameTree::Fail => f.write_str("Fail"),
            NameTree::Empty => f.write_str("Empty"),
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for Weighted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}*{:?}", self.weight, self.tree)
    }
}

impl FromStr for NameTree<Path> {
    type Err = ParseError;

    /// Parses a whole name tree, such as `/srv/a | 0.3*/srv/b & /srv/c`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse::parse_tree(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> NameTree<Path> {
        s.parse().unwrap()
    }

    #[test]
    fn weights_print_like_javas_two_decimal_format() {
        let cases = [
            (0.125, "0.13"),
            (1.005, "1.01"),
            (0.3, "0.30"),
            (0.0, "0.00"),
            (100.0, "100.00"),
            (9.999, "10.00"),
            (99.995, "100.00"),
            (0.333, "0.33"),
            (2.5, "2.50"),
            (0.005, "0.01"),
            // Above zero, never printed as zero: that would turn the branch off.
            (0.004, "0.004"),
            (0.001, "0.001"),
            (1e-7, "0.0000001"),
        ];
        for (w, want) in cases {
            assert_eq!(Weight::new(w).unwrap().to_string(), want, "weight {w}");
        }
        assert!(Weight::new(-1.0).is_err());
        assert!(Weight::new(f64::INFINITY).is_err());
        assert!(Weight::new(f64::NAN).is_err());
    }

    #[test]
    fn tiny_weights_keep_their_meaning_through_print_and_parse() {
        for w in [0.001, 0.0049, 1e-7, 3e-12] {
            let tree = NameTree::Union(vec![
                Weighted::new(Weight::new(w).unwrap(), t("/canary")),
                Weighted::new(Weight::DEFAULT, t("/main")),
            ]);
            let again: NameTree<Path> = tree.to_string().parse().unwrap();
            assert_eq!(again, tree, "{tree}");
        }
    }

    #[test]
    fn show_parenthesises_nested_alternatives_but_not_unions_inside_alternatives() {
        assert_eq!(t("/a & /b | /c").to_string(), "/a & /b | /c");
        assert_eq!(t("(/a | /b) | /c").to_string(), "(/a | /b) | /c");
        assert_eq!(t("/a & (/b & /c)").to_string(), "/a & (/b & /c)");
        assert_eq!(t("1*/a & 1*/b").to_string(), "/a & /b");
        let lone = NameTree::Union(vec![Weighted::new(Weight::new(3.0).unwrap(), t("/a"))]);
        assert_eq!(lone.to_string(), "/a");
    }

    #[test]
    fn simplify_drops_negative_and_failed_union_branches_but_stops_alternatives_at_fail() {
        assert_eq!(t("! & !").simplified(), NameTree::Neg);
        assert_eq!(t("/a | ! | /b").simplified().to_string(), "/a | !");
        assert_eq!(t("~ | $ | /b").simplified().to_string(), "$ | /b");
        assert_eq!(t("/a & ~ & $").simplified().to_string(), "/a & $");
    }

    #[test]
    fn eval_stops_alternatives_at_failure_and_unions_skip_it() {
        let set = |v: &[&str]| Some(v.iter().map(|s| s.parse::<Path>().unwrap()).collect::<BTreeSet<_>>());
        assert_eq!(t("/ok & !").eval(), set(&["/ok"]));
        assert_eq!(t("$ & ~").eval(), set(&[]));
        assert_eq!(t("! | /ok").eval(), None);
        assert_eq!(t("(! | /a) | /b").eval(), None);
        assert_eq!(t("~ | $ | /blah").eval(), set(&[]));
    }
}
