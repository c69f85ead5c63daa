//! namerd's JSON shapes: dtabs as `[{"prefix","dst"}]`, bound trees (`/api/1/bind`) and
//! delegation trees (`/api/1/delegate`), with serde on both sides so that servers can write
//! them and clients read them.
//!
//! Field order and omission follow namerd: the `type` tag first, then `path`, then `dentry`
//! (left out for the root's no-op dentry), then the node's own fields.

use std::cell::RefCell;

use serde::{Deserialize, Serialize};

use crate::addr::Addr;
use crate::bind::{BoundLeaf, BoundName};
use crate::delegate::{DelegateNode, DelegateTree, SharedDentries};
use crate::dtab::{Dentry, Dtab};
use crate::parse::ParseError;
use crate::tree::NameTree;

/// A dentry as JSON: both sides in their canonical text form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DentryJson {
    /// The prefix, such as `/svc`.
    pub prefix: String,
    /// The destination tree, such as `/#/io.l5d.fs`.
    pub dst: String,
}

/// A union branch as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightedJson<T> {
    /// The branch weight.
    pub weight: f64,
    /// The branch.
    pub tree: T,
}

/// A bound name as JSON: its address (when known), id and residual path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoundJson {
    /// The current address set.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub addr: Option<Addr>,
    /// The bound id, such as `/#/io.l5d.fs/web`.
    pub id: String,
    /// The residual path (`/` when none).
    pub path: String,
}

/// A bound tree node as `/api/1/bind` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum BoundTreeJson {
    /// A bound leaf.
    Leaf {
        /// The bound name.
        bound: BoundJson,
    },
    /// Alternatives.
    Alt {
        /// The alternatives.
        alt: Vec<BoundTreeJson>,
    },
    /// A weighted union.
    Union {
        /// The branches.
        union: Vec<WeightedJson<BoundTreeJson>>,
    },
    /// Negative.
    Neg,
    /// Failed.
    Fail,
    /// Empty.
    Empty,
}

/// A delegation tree node as `/api/1/delegate` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum DelegateJson {
    /// One dentry matched.
    Delegate {
        /// The path looked up.
        path: String,
        /// The dentry that produced the path.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        dentry: Option<DentryJson>,
        /// The rewrite.
        delegate: Box<DelegateJson>,
    },
    /// Several dentries matched, or an alternative destination.
    Alt {
        /// The path looked up.
        path: String,
        /// The dentry that produced the path.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        dentry: Option<DentryJson>,
        /// The alternatives.
        alt: Vec<DelegateJson>,
    },
    /// A weighted union destination.
    Union {
        /// The path looked up.
        path: String,
        /// The dentry that produced the path.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        dentry: Option<DentryJson>,
        /// The branches.
        union: Vec<WeightedJson<DelegateJson>>,
    },
    /// A namer bound the path.
    Leaf {
        /// The path looked up.
        path: String,
        /// The dentry that produced the path.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        dentry: Option<DentryJson>,
        /// The bound name.
        bound: BoundJson,
    },
    /// Negative (`~` as the path for an explicit `~`).
    Neg {
        /// The path looked up.
        path: String,
        /// The dentry that produced the path.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        dentry: Option<DentryJson>,
    },
    /// Failed (`!` as the path unless under `/$/fail`).
    Fail {
        /// The path looked up.
        path: String,
        /// The dentry that produced the path.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        dentry: Option<DentryJson>,
    },
    /// Empty.
    Empty {
        /// The path looked up.
        path: String,
        /// The dentry that produced the path.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        dentry: Option<DentryJson>,
    },
    /// A lookup failed.
    Exception {
        /// The path looked up.
        path: String,
        /// The dentry that produced the path.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        dentry: Option<DentryJson>,
        /// What went wrong.
        message: String,
    },
    /// A transformer rewrote a bound name.
    Transformation {
        /// The path looked up.
        path: String,
        /// The transformer.
        name: String,
        /// The name before the transformation.
        bound: BoundJson,
        /// The transformed tree.
        tree: Box<DelegateJson>,
    },
}

/// A JSON dtab could not be turned into a [`Dtab`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DtabJsonError {
    /// A prefix did not parse.
    #[error("dentry {index}: invalid prefix {text:?}: {error}")]
    Prefix {
        /// The dentry's position, from 0.
        index: usize,
        /// The prefix text.
        text: String,
        /// The parse error.
        error: ParseError,
    },
    /// A destination did not parse.
    #[error("dentry {index}: invalid dst {text:?}: {error}")]
    Dst {
        /// The dentry's position, from 0.
        index: usize,
        /// The destination text.
        text: String,
        /// The parse error.
        error: ParseError,
    },
}

impl From<&Dentry> for DentryJson {
    fn from(d: &Dentry) -> Self {
        DentryJson { prefix: d.prefix().to_string(), dst: d.dst().to_string() }
    }
}

impl From<&Dtab> for Vec<DentryJson> {
    fn from(dtab: &Dtab) -> Self {
        dtab.iter().map(DentryJson::from).collect()
    }
}

/// Parses a JSON dtab (`[{"prefix","dst"}]`, already deserialised) into a [`Dtab`].
pub fn dtab_from_json(dentries: &[DentryJson]) -> Result<Dtab, DtabJsonError> {
    dentries
        .iter()
        .enumerate()
        .map(|(index, d)| {
            let prefix =
                d.prefix.parse().map_err(|error| DtabJsonError::Prefix { index, text: d.prefix.clone(), error })?;
            let dst = d.dst.parse().map_err(|error| DtabJsonError::Dst { index, text: d.dst.clone(), error })?;
            Ok(Dentry::new(prefix, dst))
        })
        .collect()
}

impl BoundJson {
    /// The JSON for `name`, with its address if one is given.
    pub fn new(name: &BoundName, addr: Option<Addr>) -> Self {
        BoundJson { addr, id: name.id().to_string(), path: name.residual().to_string() }
    }
}

impl BoundTreeJson {
    /// The JSON for a bound tree; `addr_of` supplies each leaf's address set.
    pub fn from_tree(tree: &NameTree<BoundLeaf>, addr_of: &mut dyn FnMut(&BoundName) -> Option<Addr>) -> Self {
        match tree {
            NameTree::Leaf(leaf) => BoundTreeJson::Leaf { bound: BoundJson::new(&leaf.name, addr_of(&leaf.name)) },
            NameTree::Alt(trees) => {
                BoundTreeJson::Alt { alt: trees.iter().map(|t| Self::from_tree(t, addr_of)).collect() }
            }
            NameTree::Union(branches) => BoundTreeJson::Union {
                union: branches
                    .iter()
                    .map(|w| WeightedJson { weight: w.weight.get(), tree: Self::from_tree(&w.tree, addr_of) })
                    .collect(),
            },
            NameTree::Neg => BoundTreeJson::Neg,
            NameTree::Fail => BoundTreeJson::Fail,
            NameTree::Empty => BoundTreeJson::Empty,
        }
    }
}

impl DelegateJson {
    /// The JSON for a delegation tree; `addr_of` supplies each leaf's address set. Long
    /// dentries are shown once, as [`SharedDentries`] decides.
    pub fn from_tree(tree: &DelegateTree, addr_of: &mut dyn FnMut(&BoundName) -> Option<Addr>) -> Self {
        Self::from_tree_sharing(tree, addr_of, &mut SharedDentries::new())
    }

    fn from_tree_sharing(
        tree: &DelegateTree,
        addr_of: &mut dyn FnMut(&BoundName) -> Option<Addr>,
        shared: &mut SharedDentries,
    ) -> Self {
        let path = shown_path(tree);
        let dentry = shared.show(&tree.dentry).then(|| DentryJson::from(&tree.dentry));
        match &tree.node {
            DelegateNode::Delegate(child) => DelegateJson::Delegate {
                path,
                dentry,
                delegate: Box::new(Self::from_tree_sharing(child, addr_of, shared)),
            },
            DelegateNode::Alt(children) => DelegateJson::Alt {
                path,
                dentry,
                alt: children.iter().map(|c| Self::from_tree_sharing(c, addr_of, shared)).collect(),
            },
            DelegateNode::Union(branches) => DelegateJson::Union {
                path,
                dentry,
                union: branches
                    .iter()
                    .map(|(w, t)| WeightedJson { weight: w.get(), tree: Self::from_tree_sharing(t, addr_of, shared) })
                    .collect(),
            },
            DelegateNode::Leaf(name) => DelegateJson::Leaf { path, dentry, bound: BoundJson::new(name, addr_of(name)) },
            DelegateNode::Neg => DelegateJson::Neg { path, dentry },
            DelegateNode::Fail => DelegateJson::Fail { path, dentry },
            DelegateNode::Empty => DelegateJson::Empty { path, dentry },
            DelegateNode::Exception(message) => DelegateJson::Exception { path, dentry, message: message.clone() },
            DelegateNode::Transformation { name, bound, tree: child } => DelegateJson::Transformation {
                path,
                name: name.clone(),
                bound: BoundJson::new(bound, addr_of(bound)),
                tree: Box::new(Self::from_tree_sharing(child, addr_of, shared)),
            },
        }
    }
}

/// The output of [`delegate_json_within`] would have passed its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the delegation's JSON would be longer than {limit} bytes")]
pub struct OutputTooLarge {
    /// The limit, in bytes.
    pub limit: usize,
}

/// Writes namerd's JSON for a delegation tree straight from the tree, as
/// [`DelegateJson::from_tree`] would render it, without building it in memory first and
/// without copying address sets: `addr_of` lends each leaf's. Stops with [`OutputTooLarge`]
/// once the text passes `max_bytes`, so that a tree with large address sets cannot make an
/// arbitrarily large response.
pub fn delegate_json_within<'a>(
    tree: &'a DelegateTree,
    addr_of: &'a dyn Fn(&BoundName) -> Option<&'a Addr>,
    max_bytes: usize,
) -> Result<String, OutputTooLarge> {
    let shared = RefCell::new(SharedDentries::new());
    let view = DelegateView { tree, addr_of, shared: &shared };
    let mut out = CappedBuffer { bytes: Vec::new(), limit: max_bytes };
    serde_json::to_writer(&mut out, &view).map_err(|_| OutputTooLarge { limit: max_bytes })?;
    String::from_utf8(out.bytes).map_err(|_| OutputTooLarge { limit: max_bytes })
}

/// The path a delegation node shows: `~` for an explicit `~`, `!` for a failure other than
/// under `/$/fail`.
fn shown_path(tree: &DelegateTree) -> String {
    match &tree.node {
        DelegateNode::Neg if tree.path.is_empty() => "~".to_string(),
        DelegateNode::Fail => {
            let labels = tree.path.labels();
            let under_fail = labels.len() >= 2 && labels[0].as_bytes() == b"$" && labels[1].as_bytes() == b"fail";
            if under_fail { tree.path.to_string() } else { "!".to_string() }
        }
        _ => tree.path.to_string(),
    }
}

/// A delegation node, serialised in place.
struct DelegateView<'a, 's> {
    tree: &'a DelegateTree,
    addr_of: &'a dyn Fn(&BoundName) -> Option<&'a Addr>,
    shared: &'s RefCell<SharedDentries>,
}

/// A bound name with a borrowed address set, serialised as [`BoundJson`].
struct BoundView<'a> {
    name: &'a BoundName,
    addr: Option<&'a Addr>,
}

/// A vector that refuses to grow past its limit.
struct CappedBuffer {
    bytes: Vec<u8>,
    limit: usize,
}

impl<'a, 's> DelegateView<'a, 's> {
    fn child(&self, tree: &'a DelegateTree) -> DelegateView<'a, 's> {
        DelegateView { tree, addr_of: self.addr_of, shared: self.shared }
    }

    fn bound(&self, name: &'a BoundName) -> BoundView<'a> {
        BoundView { name, addr: (self.addr_of)(name) }
    }
}

impl Serialize for DelegateView<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;

        let tree = self.tree;
        let kind = match &tree.node {
            DelegateNode::Delegate(_) => "delegate",
            DelegateNode::Alt(_) => "alt",
            DelegateNode::Union(_) => "union",
            DelegateNode::Leaf(_) => "leaf",
            DelegateNode::Neg => "neg",
            DelegateNode::Fail => "fail",
            DelegateNode::Empty => "empty",
            DelegateNode::Exception(_) => "exception",
            DelegateNode::Transformation { .. } => "transformation",
        };
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("type", kind)?;
        map.serialize_entry("path", &shown_path(tree))?;
        if let DelegateNode::Transformation { name, bound, tree: child } = &tree.node {
            map.serialize_entry("name", name)?;
            map.serialize_entry("bound", &self.bound(bound))?;
            map.serialize_entry("tree", &self.child(child))?;
            return map.end();
        }
        if self.shared.borrow_mut().show(&tree.dentry) {
            map.serialize_entry("dentry", &DentryJson::from(&tree.dentry))?;
        }
        match &tree.node {
            DelegateNode::Delegate(child) => map.serialize_entry("delegate", &self.child(child))?,
            DelegateNode::Alt(children) => {
                let children: Vec<DelegateView<'_, '_>> = children.iter().map(|c| self.child(c)).collect();
                map.serialize_entry("alt", &children)?;
            }
            DelegateNode::Union(branches) => {
                let branches: Vec<WeightedJson<DelegateView<'_, '_>>> =
                    branches.iter().map(|(w, t)| WeightedJson { weight: w.get(), tree: self.child(t) }).collect();
                map.serialize_entry("union", &branches)?;
            }
            DelegateNode::Leaf(name) => map.serialize_entry("bound", &self.bound(name))?,
            DelegateNode::Exception(message) => map.serialize_entry("message", message)?,
            DelegateNode::Neg | DelegateNode::Fail | DelegateNode::Empty | DelegateNode::Transformation { .. } => {}
        }
        map.end()
    }
}

impl Serialize for BoundView<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;

        let mut map = serializer.serialize_map(None)?;
        if let Some(addr) = self.addr {
            map.serialize_entry("addr", addr)?;
        }
        map.serialize_entry("id", &self.name.id().to_string())?;
        map.serialize_entry("path", &self.name.residual().to_string())?;
        map.end()
    }
}

impl std::io::Write for CappedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > self.limit {
            return Err(std::io::Error::other("output limit reached"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
