//! The work budget of one binding or delegation: what a client-chosen dtab may cost.
//!
//! Counting lookups alone does not bound the time or memory of a lookup: each one scans every
//! dentry, and a matching dentry is copied with the rest of the path appended to every leaf,
//! so a large dtab or a long path makes each lookup large. A [`Work`] charges each lookup for
//! what it is about to do, before doing it, and stops once the total passes [`MAX_WORK`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::dtab::Dentry;
use crate::path::Path;
use crate::tree::NameTree;

/// The most work one binding or delegation may do, in steps: a dentry looked at, a tree node
/// or path label built. About 20 to 100 ms of one core; far beyond any dtab written by hand
/// (a thousand dentries bound a thousand lookups deep), and a firm ceiling on what a request's
/// dtab can cost a router or a namer.
pub const MAX_WORK: usize = 2_000_000;

/// The sizes of one dentry's destination, measured once per dentry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DstSize {
    /// Tree nodes (leaves included).
    pub(crate) nodes: usize,
    /// Leaves.
    pub(crate) leaves: usize,
    /// Labels, summed over the leaves.
    pub(crate) labels: usize,
}

/// Work done so far, and the sizes of the dentries met.
pub(crate) struct Work<'a> {
    spent: usize,
    limit: usize,
    sizes: HashMap<usize, DstSize>,
    cancel: Option<&'a AtomicBool>,
}

/// Why work stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The budget ran out.
    Exhausted,
    /// The caller cancelled (its request timed out or went away).
    Cancelled,
}

impl<'a> Work<'a> {
    pub(crate) fn new(limit: usize, cancel: Option<&'a AtomicBool>) -> Self {
        Work { spent: 0, limit, sizes: HashMap::new(), cancel }
    }

    /// Spends `steps`; an error when that passes the budget or the caller cancelled.
    pub(crate) fn charge(&mut self, steps: usize) -> Result<(), Stop> {
        self.spent = self.spent.saturating_add(steps);
        if self.spent > self.limit {
            return Err(Stop::Exhausted);
        }
        if self.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(Stop::Cancelled);
        }
        Ok(())
    }

    /// Charges one lookup of `path` in a dtab of `dentries` entries: scanning them.
    pub(crate) fn charge_lookup(&mut self, dentries: usize) -> Result<(), Stop> {
        self.charge(1 + dentries)
    }

    /// Charges rewriting `path` with `dentry`: every node of its destination, and every leaf
    /// with the rest of the path appended.
    pub(crate) fn charge_rewrite(&mut self, dentry: &Dentry, path: &Path) -> Result<(), Stop> {
        let size = self.size(dentry);
        let residual = path.len().saturating_sub(dentry.prefix().len());
        let steps = size.nodes.saturating_add(size.labels).saturating_add(size.leaves.saturating_mul(residual));
        self.charge(steps)
    }

    pub(crate) fn size(&mut self, dentry: &Dentry) -> DstSize {
        *self.sizes.entry(dentry.identity()).or_insert_with(|| measure(dentry.dst()))
    }
}

fn measure(tree: &NameTree<Path>) -> DstSize {
    let mut size = DstSize { nodes: 0, leaves: 0, labels: 0 };
    let mut stack = vec![tree];
    while let Some(tree) = stack.pop() {
        size.nodes += 1;
        match tree {
            NameTree::Leaf(path) => {
                size.leaves += 1;
                size.labels += path.len();
            }
            NameTree::Alt(trees) => stack.extend(trees),
            NameTree::Union(branches) => stack.extend(branches.iter().map(|w| &w.tree)),
            NameTree::Neg | NameTree::Fail | NameTree::Empty => {}
        }
    }
    size
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_are_charged_by_size_and_measured_once() {
        let dentry: Dentry = "/svc=>/a/b | /c".parse().unwrap();
        let mut work = Work::new(100, None);
        work.charge_rewrite(&dentry, &"/svc/x/y".parse().unwrap()).unwrap();
        // 3 nodes, 3 labels, and 2 leaves each given 2 more labels.
        assert_eq!(work.spent, 10);
        assert_eq!(work.sizes.len(), 1);
        work.charge_rewrite(&dentry.clone(), &"/svc".parse().unwrap()).unwrap();
        assert_eq!((work.spent, work.sizes.len()), (16, 1));
        assert_eq!(work.charge(100), Err(Stop::Exhausted));
    }

    #[test]
    fn a_cancelled_caller_stops_the_work() {
        let cancel = AtomicBool::new(false);
        let mut work = Work::new(MAX_WORK, Some(&cancel));
        assert_eq!(work.charge(1), Ok(()));
        cancel.store(true, Ordering::Relaxed);
        assert_eq!(work.charge(1), Err(Stop::Cancelled));
    }
}
