//! The interface between naming and its consumers.

use std::sync::Arc;

use tokio::sync::watch;
use waymark_dtab::{Addr, BoundLeaf, Dtab, NameTree, Path};

/// The current binding of a logical name.
#[derive(Debug, Clone, PartialEq)]
pub enum BindState {
    /// Not known yet.
    Pending,
    /// The bound tree: leaves are bound names, weights are kept, there are no `Alt` nodes.
    Bound(Arc<NameTree<BoundLeaf>>),
    /// Binding failed (for example a rewrite loop, or a namer error); the message says why.
    Failed(Arc<str>),
}

/// A source of bound trees and address sets, as watches.
///
/// Implementations share work: asking twice for the same name returns receivers of the same
/// underlying watch, and the work stops some time after the last receiver is dropped. A
/// receiver always holds the latest state; intermediate states may be skipped.
pub trait Resolver: Send + Sync + 'static {
    /// Watches the binding of `path` through the namespace's dtab followed by `local` (a
    /// per-request override; later dentries win).
    fn bind(&self, path: &Path, local: &Dtab) -> watch::Receiver<BindState>;

    /// Watches the address set of the bound id `id` (as found in a bound leaf).
    fn resolve(&self, id: &Path) -> watch::Receiver<Addr>;
}

impl BindState {
    /// The bound tree, when there is one.
    pub fn tree(&self) -> Option<&Arc<NameTree<BoundLeaf>>> {
        match self {
            BindState::Bound(tree) => Some(tree),
            _ => None,
        }
    }
}
