//! namerd's JSON shapes: dtabs as `[{"prefix","dst"}]`, bound trees (`/api/1/bind`) and
//! delegation trees (`/api/1/delegate`), with serde on both sides so that servers can write
//! them and clients read them.
//!
//! Field order and omission follow namerd: the `type` tag first, then `path`, then `dentry`
//! (left out for the root's no-op dentry), then the node's own fields.

use serde::{Deserialize, Serialize};

use crate::addr::Addr;
use crate::bind::{BoundLeaf, BoundName};
use crate::delegate::{DelegateNode, DelegateTree};
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
    /// The JSON for a delegation tree; `addr_of` supplies each leaf's address set.
    pub fn from_tree(tree: &DelegateTree, addr_of: &mut dyn FnMut(&BoundName) -> Option<Addr>) -> Self {
        let path = tree.path.to_string();
        let dentry = (!tree.dentry.is_nop()).then(|| DentryJson::from(&tree.dentry));
        match &tree.node {
            DelegateNode::Delegate(child) => {
                DelegateJson::Delegate { path, dentry, delegate: Box::new(Self::from_tree(child, addr_of)) }
            }
            DelegateNode::Alt(children) => {
                DelegateJson::Alt { path, dentry, alt: children.iter().map(|c| Self::from_tree(c, addr_of)).collect() }
            }
            DelegateNode::Union(branches) => DelegateJson::Union {
                path,
                dentry,
                union: branches
                    .iter()
                    .map(|(w, t)| WeightedJson { weight: w.get(), tree: Self::from_tree(t, addr_of) })
                    .collect(),
            },
            DelegateNode::Leaf(name) => DelegateJson::Leaf { path, dentry, bound: BoundJson::new(name, addr_of(name)) },
            DelegateNode::Neg => {
                let path = if tree.path.is_empty() { "~".to_string() } else { path };
                DelegateJson::Neg { path, dentry }
            }
            DelegateNode::Fail => {
                let under_fail = tree.path.labels().len() >= 2
                    && tree.path.labels()[0].as_bytes() == b"$"
                    && tree.path.labels()[1].as_bytes() == b"fail";
                let path = if under_fail { path } else { "!".to_string() };
                DelegateJson::Fail { path, dentry }
            }
            DelegateNode::Empty => DelegateJson::Empty { path, dentry },
            DelegateNode::Exception(message) => DelegateJson::Exception { path, dentry, message: message.clone() },
            DelegateNode::Transformation { name, bound, tree: child } => DelegateJson::Transformation {
                path,
                name: name.clone(),
                bound: BoundJson::new(bound, addr_of(bound)),
                tree: Box::new(Self::from_tree(child, addr_of)),
            },
        }
    }
}
