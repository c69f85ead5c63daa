//! Delegation trees: how a path resolves, with every alternative expanded.
//!
//! Where binding stops at the first alternative that works, delegation explores all of them
//! and records, at every node, the path being looked up and the dentry that produced it. This
//! is what namerd's `/api/1/delegate` returns and what the delegator UIs draw.

use crate::bind::{BoundName, Lookup, MAX_LOOKUPS, MAX_RECURSION, Name, Namers};
use crate::dtab::{Dentry, Dtab};
use crate::path::Path;
use crate::tree::{NameTree, Weight};

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
}

struct Delegator<'a> {
    dtab: &'a Dtab,
    namers: &'a Namers,
    max_depth: usize,
    lookups_made: usize,
}

/// Builds the simplified delegation tree for `path` through `dtab` and `namers`, exploring
/// every alternative. `max_depth` limits lookups along one chain, as in binding.
pub fn delegate(dtab: &Dtab, namers: &Namers, path: &Path, max_depth: usize) -> Result<DelegateTree, DelegateError> {
    let mut delegator = Delegator { dtab, namers, max_depth, lookups_made: 0 };
    let tree = delegator.expand(path.clone(), Dentry::nop(), 0, 0)?;
    Ok(tree.simplified())
}

impl Delegator<'_> {
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
        let matches: Vec<(Dentry, NameTree<Path>)> =
            self.dtab.iter().rev().filter_map(|d| d.rewrite(&path).map(|tree| (d.clone(), tree))).collect();
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
                    .collect::<Result<_, _>>()?;
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
