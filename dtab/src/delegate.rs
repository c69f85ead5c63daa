//! Delegation trees: how a path resolves, with every alternative expanded.
//!
//! Where binding stops at the first alternative that works, delegation explores all of them
//! and records, at every node, the path being looked up and the dentry that produced it. This
//! is what namerd's `/api/1/delegate` returns and what the delegator UIs draw.
//!
//! A client chooses the dtab and the path, so building a tree is bounded three ways: lookups
//! ([`MAX_LOOKUPS`]), work ([`MAX_WORK`]: dentries looked at, nodes and labels built) and the
//! size of the output ([`DelegateLimits::max_output_bytes`]); a caller may also cancel it.
//! Nodes share their dentries rather than copy them, and output shows a long dentry once
//! rather than at every node it produced ([`SharedDentries`]).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::AtomicBool;

use crate::bind::{BoundName, Lookup, MAX_LOOKUPS, MAX_RECURSION, Name, Namers};
use crate::dtab::{Dentry, Dtab};
use crate::path::Path;
use crate::tree::{NameTree, Weight};
use crate::work::{MAX_WORK, Stop, Work};

/// The default limit on the size of a delegation's output, in bytes (as namerd's JSON,
/// without addresses).
pub const DEFAULT_MAX_DELEGATION_BYTES: usize = 2 * 1024 * 1024;

/// Dentries whose text is longer than this many bytes are shown once in a delegation's
/// output, on the first node they produced, rather than on every node; see [`SharedDentries`].
pub const SHARED_DENTRY_BYTES: usize = 256;

/// One node of a delegation tree: the path looked up here, the dentry that produced it
/// ([`Dentry::nop`] at the root) and what became of it.
#[derive(Debug, Clone, PartialEq)]
pub struct DelegateTree {
    /// The path being looked up at this node (empty for an explicit `~`).
    pub path: Path,
    /// The dentry that produced `path`.
    pub dentry: Dentry,
    /// What the path turned into.
    pub node: DelegateNode,
}

/// What a path in a delegation tree turned into.
#[derive(Debug, Clone, PartialEq)]
pub enum DelegateNode {
    /// Exactly one dentry matched; the child explains the rewrite.
    Delegate(Box<DelegateTree>),
    /// Several dentries matched (latest first), or the destination was an alternative.
    Alt(Vec<DelegateTree>),
    /// The destination was a weighted union.
    Union(Vec<(Weight, DelegateTree)>),
    /// A namer bound the path.
    Leaf(BoundName),
    /// Nothing matched and no namer knew the path, or an explicit `~`.
    Neg,
    /// An explicit `!` or `/$/fail`.
    Fail,
    /// An explicit `$` or `/$/nil`.
    Empty,
    /// A namer lookup failed, or the recursion limit was reached inside an alternative.
    Exception(String),
    /// A transformer rewrote a bound name: the name before, and the tree after.
    Transformation {
        /// The transformer's name.
        name: String,
        /// The bound name before the transformation.
        bound: BoundName,
        /// The transformed result.
        tree: Box<DelegateTree>,
    },
}

/// Why a delegation tree could not be built at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DelegateError {
    /// The rewrites at the root went deeper than the recursion limit.
    #[error("Max recursion level reached.")]
    MaxDepth,
    /// The tree nests deeper than it is safe to build.
    #[error("name tree nesting exceeds {MAX_RECURSION} levels")]
    TooDeep,
    /// The tree would need more lookups than allowed.
    #[error("delegation needs more than {MAX_LOOKUPS} lookups")]
    TooManyLookups,
    /// The tree would need more work than allowed: a very large dtab, destination or path.
    #[error("delegation needs more than {MAX_WORK} steps; the dtab or the path is too large")]
    TooMuchWork,
    /// The tree would be larger to show than allowed.
    #[error("the delegation would take more than {limit} bytes to show")]
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The caller gave up (its request timed out or went away) before the tree was built.
    #[error("delegation stopped before it completed: its request timed out")]
    Cancelled,
}

/// Limits on one delegation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DelegateLimits {
    /// The most lookups one chain of rewrites may take, as in binding.
    pub max_depth: usize,
    /// The largest output allowed, in bytes of namerd's JSON without addresses (an estimate
    /// made before anything is written).
    pub max_output_bytes: usize,
}

/// Decides, node by node in document order, whether a node of a delegation tree shows its
/// dentry. The root's [`Dentry::nop`] is never shown. A dentry of up to
/// [`SHARED_DENTRY_BYTES`] is shown on every node it produced, as namerd does; a longer one
/// only on the first, and the other nodes it produced leave it out. A dentry with thousands
/// of alternatives produces thousands of nodes, and repeating it on each would make the output
/// grow with the square of the dtab.
#[derive(Debug, Default)]
pub struct SharedDentries {
    lengths: HashMap<usize, usize>,
    shown: HashSet<usize>,
}

/// Counts what is written to it.
struct ByteCounter(usize);

struct Delegator<'a, 'c> {
    dtab: &'a Dtab,
    namers: &'a Namers,
    max_depth: usize,
    lookups_made: usize,
    work: Work<'c>,
}

/// Builds the simplified delegation tree for `path` through `dtab` and `namers`, exploring
/// every alternative, within the default limits. `max_depth` limits lookups along one chain,
/// as in binding.
pub fn delegate(dtab: &Dtab, namers: &Namers, path: &Path, max_depth: usize) -> Result<DelegateTree, DelegateError> {
    delegate_within(dtab, namers, path, DelegateLimits { max_depth, ..DelegateLimits::default() }, None)
}

/// [`delegate`] within `limits`, stopping early with [`DelegateError::Cancelled`] once
/// `cancel` is set (checked at every lookup), so that a caller that gives up does not leave
/// the work running.
pub fn delegate_within(
    dtab: &Dtab,
    namers: &Namers,
    path: &Path,
    limits: DelegateLimits,
    cancel: Option<&AtomicBool>,
) -> Result<DelegateTree, DelegateError> {
    let mut delegator =
        Delegator { dtab, namers, max_depth: limits.max_depth, lookups_made: 0, work: Work::new(MAX_WORK, cancel) };
    let tree = delegator.expand(path.clone(), Dentry::nop(), 0, 0)?.simplified();
    if tree.output_size(limits.max_output_bytes).is_none() {
        return Err(DelegateError::TooLarge { limit: limits.max_output_bytes });
    }
    Ok(tree)
}

impl Default for DelegateLimits {
    fn default() -> Self {
        DelegateLimits { max_depth: crate::bind::DEFAULT_MAX_DEPTH, max_output_bytes: DEFAULT_MAX_DELEGATION_BYTES }
    }
}

impl SharedDentries {
    /// A fresh decision for one rendering of one tree.
    pub fn new() -> Self {
        SharedDentries::default()
    }

    /// Whether the next node, in document order, shows `dentry`.
    pub fn show(&mut self, dentry: &Dentry) -> bool {
        if dentry.is_nop() {
            return false;
        }
        self.text_len(dentry) <= SHARED_DENTRY_BYTES || self.shown.insert(dentry.identity())
    }

    /// The length of the dentry's text, measured once per dentry.
    pub fn text_len(&mut self, dentry: &Dentry) -> usize {
        *self.lengths.entry(dentry.identity()).or_insert_with(|| {
            let mut counter = ByteCounter(0);
            let _ = fmt::write(&mut counter, format_args!("{dentry}"));
            counter.0
        })
    }
}

impl fmt::Write for ByteCounter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0 += s.len();
        Ok(())
    }
}

impl From<Stop> for DelegateError {
    fn from(stop: Stop) -> Self {
        match stop {
            Stop::Exhausted => DelegateError::TooMuchWork,
            Stop::Cancelled => DelegateError::Cancelled,
        }
    }
}

impl Delegator<'_, '_> {
    /// Expands the node for unbound `path`, produced by `dentry`.
    /// `depth` counts lookups along this chain; `frames` counts recursion, to bound the
    /// stack and the depth of the result.
    fn expand(
        &mut self,
        path: Path,
        dentry: Dentry,
        depth: usize,
        frames: usize,
    ) -> Result<DelegateTree, DelegateError> {
        if depth > self.max_depth {
            return Err(DelegateError::MaxDepth);
        }
        if frames > MAX_RECURSION {
            return Err(DelegateError::TooDeep);
        }
        self.lookups_made += 1;
        if self.lookups_made > MAX_LOOKUPS {
            return Err(DelegateError::TooManyLookups);
        }
        self.work.charge_lookup(self.dtab.len())?;
        let mut matches: Vec<(Dentry, NameTree<Path>)> = Vec::new();
        for d in self.dtab.iter().rev().filter(|d| d.prefix().matches(&path)) {
            self.work.charge_rewrite(d, &path)?;
            if let Some(tree) = d.rewrite(&path) {
                matches.push((d.clone(), tree));
            }
        }
        let node = match matches.len() {
            0 => {
                let (answer, _) = self.namers.lookup(&path);
                match answer {
                    Lookup::Found(NameTree::Neg) => DelegateNode::Neg,
                    Lookup::Found(tree) => return self.convert(&path, &dentry, &tree, depth, frames + 1),
                    Lookup::Pending => DelegateNode::Exception(format!("the namer has no answer for {path} yet")),
                    Lookup::Failed(message) => DelegateNode::Exception(message),
                }
            }
            1 => {
                let (m, tree) = matches.into_iter().next().unwrap_or_else(|| unreachable!("one match"));
                let tree = tree.map(&mut Name::Path);
                DelegateNode::Delegate(Box::new(self.convert(&path, &m, &tree, depth, frames + 1)?))
            }
            _ => {
                let mut children = Vec::with_capacity(matches.len());
                for (m, tree) in matches {
                    let tree = tree.map(&mut Name::Path);
                    children.push(self.convert_or_exception(&path, &m, &tree, depth, frames + 1)?);
                }
                DelegateNode::Alt(children)
            }
        };
        Ok(DelegateTree { path, dentry, node })
    }

    /// Like [`Self::convert`], but inside an alternative or union an error becomes an
    /// exception node in place, as Linkerd does.
    /// Safety limits (nesting, total lookups) still fail the whole tree.
    fn convert_or_exception(
        &mut self,
        path: &Path,
        dentry: &Dentry,
        tree: &NameTree<Name>,
        depth: usize,
        frames: usize,
    ) -> Result<DelegateTree, DelegateError> {
        match self.convert(path, dentry, tree, depth, frames) {
            Err(DelegateError::MaxDepth) => Ok(DelegateTree {
                path: path.clone(),
                dentry: dentry.clone(),
                node: DelegateNode::Exception(DelegateError::MaxDepth.to_string()),
            }),
            other => other,
        }
    }

    /// Turns the destination `tree` that `dentry` produced for `path` into delegation nodes,
    /// expanding each unbound leaf into the node for its own path.
    fn convert(
        &mut self,
        path: &Path,
        dentry: &Dentry,
        tree: &NameTree<Name>,
        depth: usize,
        frames: usize,
    ) -> Result<DelegateTree, DelegateError> {
        if frames > MAX_RECURSION {
            return Err(DelegateError::TooDeep);
        }
        let at = |node| DelegateTree { path: path.clone(), dentry: dentry.clone(), node };
        Ok(match tree {
            NameTree::Leaf(Name::Path(next)) => {
                return self.expand(next.clone(), dentry.clone(), depth + 1, frames + 1);
            }
            NameTree::Leaf(Name::Bound(bound)) => at(DelegateNode::Leaf(bound.clone())),
            NameTree::Alt(trees) => {
                let children = trees
                    .iter()
                    .map(|t| self.convert_or_exception(path, dentry, t, depth, frames + 1))
                    .collect::<Result<_, _>>()?;
                at(DelegateNode::Alt(children))
            }
            NameTree::Union(branches) => {
                let children = branches
                    .iter()
                    .map(|w| Ok((w.weight, self.convert_or_exception(path, dentry, &w.tree, depth, frames + 1)?)))
                    .collect::<Result<_, DelegateError>>()?;
                at(DelegateNode::Union(children))
            }
            NameTree::Fail => at(DelegateNode::Fail),
            NameTree::Empty => at(DelegateNode::Empty),
            // An explicit `~` has no path of its own.
            NameTree::Neg => DelegateTree { path: Path::empty(), dentry: dentry.clone(), node: DelegateNode::Neg },
        })
    }
}

impl DelegateTree {
    /// Linkerd's simplification, which namerd always applies: a `Delegate` whose child kept
    /// the same path is replaced by the child (taking the `Delegate`'s dentry), one-child
    /// alternatives and unions become delegates, and an alternative splices in the children
    /// of alternatives at the same path.
    pub fn simplified(self) -> DelegateTree {
        let DelegateTree { path, dentry, node } = self;
        match node {
            DelegateNode::Delegate(child) => {
                let child = child.simplified();
                let terminal = matches!(child.node, DelegateNode::Neg | DelegateNode::Fail | DelegateNode::Empty);
                if !terminal && child.path == path {
                    DelegateTree { path, dentry, node: child.node }
                } else {
                    DelegateTree { path, dentry, node: DelegateNode::Delegate(Box::new(child)) }
                }
            }
            DelegateNode::Alt(mut children) => match children.len() {
                0 => DelegateTree { path, dentry, node: DelegateNode::Neg },
                1 => {
                    let only = children.pop().unwrap_or_else(|| unreachable!("one child"));
                    DelegateTree { path, dentry, node: DelegateNode::Delegate(Box::new(only)) }.simplified()
                }
                _ => {
                    let mut spliced = Vec::with_capacity(children.len());
                    for child in children {
                        let child = child.simplified();
                        match child.node {
                            DelegateNode::Alt(grandchildren) if child.path == path => spliced.extend(grandchildren),
                            node => spliced.push(DelegateTree { node, ..child }),
                        }
                    }
                    DelegateTree { path, dentry, node: DelegateNode::Alt(spliced) }
                }
            },
            DelegateNode::Union(mut branches) => match branches.len() {
                0 => DelegateTree { path, dentry, node: DelegateNode::Neg },
                1 => {
                    let (_, only) = branches.pop().unwrap_or_else(|| unreachable!("one branch"));
                    DelegateTree { path, dentry, node: DelegateNode::Delegate(Box::new(only)) }.simplified()
                }
                _ => {
                    let branches = branches.into_iter().map(|(w, t)| (w, t.simplified())).collect();
                    DelegateTree { path, dentry, node: DelegateNode::Union(branches) }
                }
            },
            node => DelegateTree { path, dentry, node },
        }
    }

    /// About how many bytes namerd's JSON for this tree takes without addresses, sharing long
    /// dentries as [`SharedDentries`] does; `None` once that passes `limit`. It walks the
    /// tree once, in document order, and stops as soon as the limit is passed.
    pub fn output_size(&self, limit: usize) -> Option<usize> {
        /// The bytes of a node's type tag, keys, quotes and punctuation.
        const NODE: usize = 40;
        let path_len = |path: &Path| path.labels().iter().map(|l| l.as_bytes().len() + 1).sum::<usize>().max(1);
        let mut dentries = SharedDentries::new();
        let mut size = 0usize;
        let mut stack = vec![self];
        while let Some(tree) = stack.pop() {
            size += NODE + path_len(&tree.path);
            if dentries.show(&tree.dentry) {
                size += 32 + dentries.text_len(&tree.dentry);
            }
            let mut children: Vec<&DelegateTree> = Vec::new();
            match &tree.node {
                DelegateNode::Delegate(child) => children.push(child),
                DelegateNode::Alt(trees) => children.extend(trees),
                DelegateNode::Union(branches) => {
                    size += 32 * branches.len();
                    children.extend(branches.iter().map(|(_, t)| t));
                }
                DelegateNode::Leaf(name) => size += NODE + path_len(name.id()) + path_len(name.residual()),
                DelegateNode::Exception(message) => size += 16 + message.len(),
                DelegateNode::Transformation { name, bound, tree } => {
                    size += NODE + name.len() + path_len(bound.id()) + path_len(bound.residual());
                    children.push(tree);
                }
                DelegateNode::Neg | DelegateNode::Fail | DelegateNode::Empty => {}
            }
            if size > limit {
                return None;
            }
            // Reversed, so that the first child is visited first, as it is written.
            stack.extend(children.into_iter().rev());
        }
        Some(size)
    }

    /// Every bound name in the tree, in tree order.
    pub fn bound_names(&self) -> Vec<&BoundName> {
        let mut out = Vec::new();
        self.collect_bound(&mut out);
        out
    }

    fn collect_bound<'a>(&'a self, out: &mut Vec<&'a BoundName>) {
        match &self.node {
            DelegateNode::Leaf(b) => out.push(b),
            DelegateNode::Delegate(c) => c.collect_bound(out),
            DelegateNode::Alt(cs) => cs.iter().for_each(|c| c.collect_bound(out)),
            DelegateNode::Union(bs) => bs.iter().for_each(|(_, c)| c.collect_bound(out)),
            DelegateNode::Transformation { tree, .. } => tree.collect_bound(out),
            DelegateNode::Neg | DelegateNode::Fail | DelegateNode::Empty | DelegateNode::Exception(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::json::{DelegateJson, delegate_json_within};

    fn fanout(n: usize) -> Dtab {
        format!("/svc=>{}", (0..n).map(|i| format!("/a{i}")).collect::<Vec<_>>().join(" | ")).parse().unwrap()
    }

    fn json(tree: &DelegateTree) -> String {
        serde_json::to_string(&DelegateJson::from_tree(tree, &mut |_| None)).unwrap()
    }

    #[test]
    fn a_wide_alternative_is_explained_in_output_linear_in_the_dtab() {
        let dtab = fanout(5_000);
        let dentry_text = dtab.dentries()[0].dst().to_string();
        let tree = delegate(&dtab, &Namers::new(), &"/svc/web".parse().unwrap(), 100).unwrap();
        let DelegateNode::Alt(children) = &tree.node else { panic!("{tree:?}") };
        assert_eq!(children.len(), 5_000);
        // Every child shares the one dentry rather than holding a copy.
        assert!(children.iter().all(|c| c.dentry.is_same(&dtab.dentries()[0])));
        let text = json(&tree);
        assert_eq!(text.matches(&dentry_text).count(), 1, "the long dentry is shown once");
        assert!(text.len() < 2 * dentry_text.len() + 60 * 5_000, "{} bytes", text.len());
        // Streamed straight from the tree, the JSON is the same.
        assert_eq!(delegate_json_within(&tree, &|_| None, usize::MAX).unwrap(), text);
        assert!(delegate_json_within(&tree, &|_| None, text.len() - 1).is_err());
    }

    #[test]
    fn short_dentries_are_repeated_on_every_node_as_namerd_does() {
        let dtab: Dtab = "/svc=>/a | /b".parse().unwrap();
        let tree = delegate(&dtab, &Namers::new(), &"/svc".parse().unwrap(), 100).unwrap();
        assert_eq!(json(&tree).matches(r#""dentry":{"prefix":"/svc","dst":"/a | /b"}"#).count(), 2);
    }

    #[test]
    fn delegation_is_bounded_in_lookups_work_and_output() {
        let namers = Namers::new();
        let svc: Path = "/svc".parse().unwrap();
        assert_eq!(delegate(&fanout(20_000), &namers, &svc, 100), Err(DelegateError::TooManyLookups));
        // Each of a few thousand leaves would carry a path of a thousand labels.
        let long: Path = format!("/svc{}", "/x".repeat(1_000)).parse().unwrap();
        assert_eq!(delegate(&fanout(3_000), &namers, &long, 100), Err(DelegateError::TooMuchWork));
        let limits = DelegateLimits { max_depth: 100, max_output_bytes: 10_000 };
        assert_eq!(
            delegate_within(&fanout(1_000), &namers, &svc, limits, None),
            Err(DelegateError::TooLarge { limit: 10_000 })
        );
    }

    #[test]
    fn a_cancelled_delegation_stops() {
        let cancel = AtomicBool::new(true);
        cancel.store(true, Ordering::Relaxed);
        let result = delegate_within(
            &fanout(10),
            &Namers::new(),
            &"/svc".parse().unwrap(),
            DelegateLimits::default(),
            Some(&cancel),
        );
        assert_eq!(result, Err(DelegateError::Cancelled));
    }
}
