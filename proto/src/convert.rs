//! Conversions between `io.linkerd.mesh` messages and the dtab crate's types.
//!
//! Every conversion works on references. From a dtab type to a message it cannot fail
//! (`mesh::Dtab::from(&dtab)`); from a message to a dtab type it checks the message
//! (`Dtab::try_from(&message)`) and reports a [`ConvertError`] when it is malformed.
//!
//! Messages are written the way Linkerd 1 needs to read them (see the crate documentation on
//! field presence): union weights and `Endpoint.inet_af` are always set, bound and delegate
//! leaves always carry a residual, and every delegate-tree node carries its path and dentry.
//! Reading is as lenient as proto3 allows where the meaning is clear (an absent weight is
//! `0.0`, an absent residual is the empty path) and strict where it is not (an absent leaf id,
//! an empty label, an unset oneof).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_json::{Map, Value};
use waymark_dtab::{
    ADDR_WEIGHT_KEY, Addr, Address, BoundLeaf, BoundName, DelegateNode, DelegateTree, Dentry, Dtab, EmptyLabel,
    InvalidWeight, Label, NameTree, Path, Prefix, PrefixElem, SHARED_DENTRY_BYTES, SharedDentries, Weight, Weighted,
};

use crate::mesh;
use crate::mesh::dtab::dentry::prefix::{Elem, elem};
use crate::mesh::endpoint::AddressFamily;
use crate::mesh::{bound_delegate_tree as bdt, bound_name_tree as bnt, path_name_tree as pnt, replicas};

/// The text namerd puts before the message of every exception node of a delegate tree.
/// Reading a delegate tree removes it again, so that exceptions round-trip.
pub const EXCEPTION_PREFIX: &str = "BoundDelegateTree Exception: ";

/// The metadata key Linkerd 1 mirrors into `Endpoint.meta.nodeName`.
pub const NODE_NAME_KEY: &str = "nodeName";

/// A message could not be turned into a dtab type.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConvertError {
    /// A field the conversion needs was absent.
    #[error("{0} is missing")]
    MissingField(&'static str),
    /// None of a oneof's fields was set.
    #[error("{0} has no value")]
    MissingOneof(&'static str),
    /// A path or prefix element was empty.
    #[error("a path label may not be empty")]
    EmptyLabel,
    /// A union weight was negative, infinite or not a number.
    #[error(transparent)]
    InvalidWeight(#[from] InvalidWeight),
    /// An endpoint address was neither 4 nor 16 bytes long.
    #[error("an endpoint address must be 4 or 16 bytes long, not {0}")]
    AddressLength(usize),
    /// An endpoint's address family was not one the protocol defines.
    #[error("unknown endpoint address family {0}")]
    UnknownAddressFamily(i32),
    /// An endpoint's address family disagreed with its address length.
    #[error("an endpoint of address family {family:?} has a {len}-byte address")]
    AddressFamilyMismatch {
        /// The declared family.
        family: AddressFamily,
        /// The address length, in bytes.
        len: usize,
    },
    /// An endpoint's port was not between 0 and 65535.
    #[error("endpoint port {0} is out of range")]
    InvalidPort(i32),
}

/// A dtab and the version its store gave it: the content of `VersionedDtab` and `DtabRsp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionedDtab {
    /// The store's opaque version, as raw bytes (HTTP ETags carry them base64-encoded; the
    /// mesh API does not).
    pub version: Vec<u8>,
    /// The dtab.
    pub dtab: Dtab,
}

/// The field a conversion needs, or [`ConvertError::MissingField`] naming it.
fn required<'a, T>(field: &'a Option<T>, name: &'static str) -> Result<&'a T, ConvertError> {
    field.as_ref().ok_or(ConvertError::MissingField(name))
}

/// A union weight as read: absent is proto3's default, `0.0`.
fn weight_from(weight: Option<f64>) -> Result<Weight, ConvertError> {
    Ok(Weight::new(weight.unwrap_or(0.0))?)
}

/// A residual as read: absent is the empty path (Linkerd's client reads it so, too).
fn residual_from(residual: &Option<mesh::Path>) -> Result<Path, ConvertError> {
    residual.as_ref().map_or(Ok(Path::empty()), Path::try_from)
}

impl From<EmptyLabel> for ConvertError {
    fn from(_: EmptyLabel) -> Self {
        ConvertError::EmptyLabel
    }
}

impl From<ConvertError> for tonic::Status {
    /// A malformed request is the client's fault: `INVALID_ARGUMENT`, with the reason.
    fn from(e: ConvertError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

// Paths, prefixes and dtabs.

impl From<&Path> for mesh::Path {
    fn from(path: &Path) -> Self {
        mesh::Path { elems: path.labels().iter().map(|l| l.as_bytes().to_vec()).collect() }
    }
}

impl TryFrom<&mesh::Path> for Path {
    type Error = ConvertError;

    fn try_from(path: &mesh::Path) -> Result<Self, Self::Error> {
        let labels = path.elems.iter().map(|e| Label::new(e.as_slice())).collect::<Result<Vec<_>, _>>()?;
        Ok(Path::from_labels(labels))
    }
}

impl From<&Prefix> for mesh::dtab::dentry::Prefix {
    fn from(prefix: &Prefix) -> Self {
        let elems = prefix
            .elems()
            .iter()
            .map(|e| Elem {
                value: Some(match e {
                    PrefixElem::Label(l) => elem::Value::Label(l.as_bytes().to_vec()),
                    PrefixElem::Any => elem::Value::Wildcard(elem::Wildcard {}),
                }),
            })
            .collect();
        mesh::dtab::dentry::Prefix { elems }
    }
}

impl TryFrom<&mesh::dtab::dentry::Prefix> for Prefix {
    type Error = ConvertError;

    fn try_from(prefix: &mesh::dtab::dentry::Prefix) -> Result<Self, Self::Error> {
        let elems = prefix
            .elems
            .iter()
            .map(|e| match required(&e.value, "Dtab.Dentry.Prefix.Elem.value") {
                Ok(elem::Value::Label(bytes)) => Ok(PrefixElem::Label(Label::new(bytes.as_slice())?)),
                Ok(elem::Value::Wildcard(_)) => Ok(PrefixElem::Any),
                Err(_) => Err(ConvertError::MissingOneof("Dtab.Dentry.Prefix.Elem.value")),
            })
            .collect::<Result<Vec<_>, ConvertError>>()?;
        Ok(Prefix::new(elems))
    }
}

impl From<&Dentry> for mesh::dtab::Dentry {
    fn from(dentry: &Dentry) -> Self {
        mesh::dtab::Dentry { prefix: Some(dentry.prefix().into()), dst: Some(dentry.dst().into()) }
    }
}

impl TryFrom<&mesh::dtab::Dentry> for Dentry {
    type Error = ConvertError;

    fn try_from(dentry: &mesh::dtab::Dentry) -> Result<Self, Self::Error> {
        let prefix = Prefix::try_from(required(&dentry.prefix, "Dtab.Dentry.prefix")?)?;
        let dst = NameTree::try_from(required(&dentry.dst, "Dtab.Dentry.dst")?)?;
        Ok(Dentry::new(prefix, dst))
    }
}

impl From<&Dtab> for mesh::Dtab {
    fn from(dtab: &Dtab) -> Self {
        mesh::Dtab { dentries: dtab.iter().map(Into::into).collect() }
    }
}

impl TryFrom<&mesh::Dtab> for Dtab {
    type Error = ConvertError;

    fn try_from(dtab: &mesh::Dtab) -> Result<Self, Self::Error> {
        dtab.dentries.iter().map(Dentry::try_from).collect()
    }
}

impl From<&VersionedDtab> for mesh::VersionedDtab {
    fn from(v: &VersionedDtab) -> Self {
        mesh::VersionedDtab {
            version: Some(mesh::versioned_dtab::Version { id: v.version.clone() }),
            dtab: Some((&v.dtab).into()),
        }
    }
}

impl TryFrom<&mesh::VersionedDtab> for VersionedDtab {
    type Error = ConvertError;

    /// An absent version reads as the empty version: clients only display it.
    fn try_from(v: &mesh::VersionedDtab) -> Result<Self, Self::Error> {
        let version = v.version.as_ref().map(|v| v.id.clone()).unwrap_or_default();
        let dtab = Dtab::try_from(required(&v.dtab, "VersionedDtab.dtab")?)?;
        Ok(VersionedDtab { version, dtab })
    }
}

impl From<&VersionedDtab> for mesh::DtabRsp {
    fn from(v: &VersionedDtab) -> Self {
        mesh::DtabRsp { dtab: Some(v.into()) }
    }
}

impl TryFrom<&mesh::DtabRsp> for VersionedDtab {
    type Error = ConvertError;

    fn try_from(rsp: &mesh::DtabRsp) -> Result<Self, Self::Error> {
        VersionedDtab::try_from(required(&rsp.dtab, "DtabRsp.dtab")?)
    }
}

// Path name trees.

impl From<&NameTree<Path>> for mesh::PathNameTree {
    fn from(tree: &NameTree<Path>) -> Self {
        let node = match tree {
            NameTree::Leaf(path) => pnt::Node::Leaf(pnt::Leaf { id: Some(path.into()) }),
            NameTree::Alt(trees) => pnt::Node::Alt(pnt::Alt { trees: trees.iter().map(Into::into).collect() }),
            NameTree::Union(branches) => pnt::Node::Union(pnt::Union {
                trees: branches
                    .iter()
                    .map(|w| pnt::union::Weighted { weight: Some(w.weight.get()), tree: Some((&w.tree).into()) })
                    .collect(),
            }),
            NameTree::Neg => pnt::Node::Neg(pnt::Neg {}),
            NameTree::Fail => pnt::Node::Fail(pnt::Fail {}),
            NameTree::Empty => pnt::Node::Empty(pnt::Empty {}),
        };
        mesh::PathNameTree { node: Some(node) }
    }
}

impl TryFrom<&mesh::PathNameTree> for NameTree<Path> {
    type Error = ConvertError;

    fn try_from(tree: &mesh::PathNameTree) -> Result<Self, Self::Error> {
        Ok(match tree.node.as_ref().ok_or(ConvertError::MissingOneof("PathNameTree.node"))? {
            pnt::Node::Leaf(leaf) => NameTree::Leaf(Path::try_from(required(&leaf.id, "PathNameTree.Leaf.id")?)?),
            pnt::Node::Alt(alt) => NameTree::Alt(alt.trees.iter().map(NameTree::try_from).collect::<Result<_, _>>()?),
            pnt::Node::Union(union) => NameTree::Union(
                union
                    .trees
                    .iter()
                    .map(|w| {
                        let tree = NameTree::try_from(required(&w.tree, "PathNameTree.Union.Weighted.tree")?)?;
                        Ok(Weighted::new(weight_from(w.weight)?, tree))
                    })
                    .collect::<Result<_, ConvertError>>()?,
            ),
            pnt::Node::Neg(_) => NameTree::Neg,
            pnt::Node::Fail(_) => NameTree::Fail,
            pnt::Node::Empty(_) => NameTree::Empty,
        })
    }
}

// Bound name trees.

/// A bound leaf as written: both the id and the residual, even when the residual is empty.
fn bound_leaf(name: &BoundName) -> bnt::Leaf {
    bnt::Leaf { id: Some(name.id().into()), residual: Some(name.residual().into()) }
}

fn bound_tree_to_proto<T>(tree: &NameTree<T>, name_of: &impl Fn(&T) -> &BoundName) -> mesh::BoundNameTree {
    let node = match tree {
        NameTree::Leaf(leaf) => bnt::Node::Leaf(bound_leaf(name_of(leaf))),
        NameTree::Alt(trees) => {
            bnt::Node::Alt(bnt::Alt { trees: trees.iter().map(|t| bound_tree_to_proto(t, name_of)).collect() })
        }
        NameTree::Union(branches) => bnt::Node::Union(bnt::Union {
            trees: branches
                .iter()
                .map(|w| bnt::union::Weighted {
                    weight: Some(w.weight.get()),
                    tree: Some(bound_tree_to_proto(&w.tree, name_of)),
                })
                .collect(),
        }),
        NameTree::Neg => bnt::Node::Neg(bnt::Neg {}),
        NameTree::Fail => bnt::Node::Fail(bnt::Fail {}),
        NameTree::Empty => bnt::Node::Empty(bnt::Empty {}),
    };
    mesh::BoundNameTree { node: Some(node) }
}

/// Reads a bound tree; `weight` is the weight of the innermost union branch enclosing `tree`,
/// which its leaves inherit, as binding gives them.
fn bound_tree_from_proto(
    tree: &mesh::BoundNameTree,
    weight: Option<Weight>,
) -> Result<NameTree<BoundLeaf>, ConvertError> {
    Ok(match tree.node.as_ref().ok_or(ConvertError::MissingOneof("BoundNameTree.node"))? {
        bnt::Node::Leaf(leaf) => {
            let id = Path::try_from(required(&leaf.id, "BoundNameTree.Leaf.id")?)?;
            NameTree::Leaf(BoundLeaf { name: BoundName::new(id, residual_from(&leaf.residual)?), weight })
        }
        bnt::Node::Alt(alt) => {
            NameTree::Alt(alt.trees.iter().map(|t| bound_tree_from_proto(t, weight)).collect::<Result<_, _>>()?)
        }
        bnt::Node::Union(union) => NameTree::Union(
            union
                .trees
                .iter()
                .map(|w| {
                    let branch_weight = weight_from(w.weight)?;
                    let tree = required(&w.tree, "BoundNameTree.Union.Weighted.tree")?;
                    Ok(Weighted::new(branch_weight, bound_tree_from_proto(tree, Some(branch_weight))?))
                })
                .collect::<Result<_, ConvertError>>()?,
        ),
        bnt::Node::Neg(_) => NameTree::Neg,
        bnt::Node::Fail(_) => NameTree::Fail,
        bnt::Node::Empty(_) => NameTree::Empty,
    })
}

impl From<&NameTree<BoundLeaf>> for mesh::BoundNameTree {
    /// The leaves' own weights are not written: the union branches carry them. (A weight
    /// binding left on a leaf whose union collapsed to it is therefore dropped, as Finagle
    /// drops it; alone, it balances nothing.)
    fn from(tree: &NameTree<BoundLeaf>) -> Self {
        bound_tree_to_proto(tree, &|leaf: &BoundLeaf| &leaf.name)
    }
}

impl From<&NameTree<BoundName>> for mesh::BoundNameTree {
    fn from(tree: &NameTree<BoundName>) -> Self {
        bound_tree_to_proto(tree, &|name: &BoundName| name)
    }
}

impl TryFrom<&mesh::BoundNameTree> for NameTree<BoundLeaf> {
    type Error = ConvertError;

    /// Each leaf gets the weight of its innermost enclosing union branch (`None` outside any
    /// union), as binding gives it, so a bound tree survives the trip through the wire.
    fn try_from(tree: &mesh::BoundNameTree) -> Result<Self, Self::Error> {
        bound_tree_from_proto(tree, None)
    }
}

impl TryFrom<&mesh::BoundNameTree> for NameTree<BoundName> {
    type Error = ConvertError;

    fn try_from(tree: &mesh::BoundNameTree) -> Result<Self, Self::Error> {
        Ok(bound_tree_from_proto(tree, None)?.map(&mut |leaf| leaf.name))
    }
}

impl From<&NameTree<BoundLeaf>> for mesh::BoundTreeRsp {
    fn from(tree: &NameTree<BoundLeaf>) -> Self {
        mesh::BoundTreeRsp { tree: Some(tree.into()) }
    }
}

impl TryFrom<&mesh::BoundTreeRsp> for NameTree<BoundLeaf> {
    type Error = ConvertError;

    fn try_from(rsp: &mesh::BoundTreeRsp) -> Result<Self, Self::Error> {
        NameTree::try_from(required(&rsp.tree, "BoundTreeRsp.tree")?)
    }
}

// Delegate trees.

/// A delegate leaf as written: Linkerd rejects the whole tree unless both fields are present.
fn delegate_leaf(name: &BoundName) -> bdt::Leaf {
    bdt::Leaf { id: Some(name.id().into()), residual: Some(name.residual().into()) }
}

fn delegate_leaf_from(leaf: &bdt::Leaf) -> Result<BoundName, ConvertError> {
    let id = Path::try_from(required(&leaf.id, "BoundDelegateTree.Leaf.id")?)?;
    Ok(BoundName::new(id, residual_from(&leaf.residual)?))
}

impl From<&DelegateTree> for mesh::BoundDelegateTree {
    /// Every node carries its path and dentry, the root its [`Dentry::nop`]; exceptions carry
    /// [`EXCEPTION_PREFIX`] as namerd writes them. Unlike namerd, transformation nodes carry
    /// their dentry too, without which Linkerd's client rejects the tree. A long dentry is
    /// carried once, by the first node it produced, as the JSON shows it ([`SharedDentries`]);
    /// the other nodes it produced carry [`Dentry::nop`], so that the message does not grow
    /// with the square of a dtab with thousands of alternatives.
    fn from(tree: &DelegateTree) -> Self {
        delegate_tree(tree, &mut SharedDentries::new())
    }
}

fn delegate_tree(tree: &DelegateTree, shared: &mut SharedDentries) -> mesh::BoundDelegateTree {
    // Decided before the children, in the order the JSON decides it.
    let shown = match &tree.node {
        DelegateNode::Transformation { .. } => shared.text_len(&tree.dentry) <= SHARED_DENTRY_BYTES,
        _ => shared.show(&tree.dentry),
    };
    let dentry = if shown { (&tree.dentry).into() } else { (&Dentry::nop()).into() };
    let node = match &tree.node {
        DelegateNode::Delegate(child) => bdt::Node::Delegate(Box::new(delegate_tree(child, shared))),
        DelegateNode::Alt(children) => {
            bdt::Node::Alt(bdt::Alt { trees: children.iter().map(|c| delegate_tree(c, shared)).collect() })
        }
        DelegateNode::Union(branches) => bdt::Node::Union(bdt::Union {
            trees: branches
                .iter()
                .map(|(weight, child)| bdt::union::Weighted {
                    weight: Some(weight.get()),
                    tree: Some(delegate_tree(child, shared)),
                })
                .collect(),
        }),
        DelegateNode::Leaf(name) => bdt::Node::Leaf(delegate_leaf(name)),
        DelegateNode::Neg => bdt::Node::Neg(bdt::Neg {}),
        DelegateNode::Fail => bdt::Node::Fail(bdt::Fail {}),
        DelegateNode::Empty => bdt::Node::Empty(bdt::Empty {}),
        DelegateNode::Exception(message) => bdt::Node::Exception(format!("{EXCEPTION_PREFIX}{message}")),
        DelegateNode::Transformation { name, bound, tree: child } => {
            bdt::Node::Transformation(Box::new(bdt::Transformation {
                name: name.clone(),
                leaf: Some(delegate_leaf(bound)),
                tree: Some(Box::new(delegate_tree(child, shared))),
            }))
        }
    };
    mesh::BoundDelegateTree { path: Some((&tree.path).into()), dentry: Some(dentry), node: Some(node) }
}

impl TryFrom<&mesh::BoundDelegateTree> for DelegateTree {
    type Error = ConvertError;

    /// An absent dentry reads as [`Dentry::nop`], because namerd leaves it out on transformation
    /// nodes and the dentry only explains the tree. [`EXCEPTION_PREFIX`] is removed from
    /// exception messages.
    fn try_from(tree: &mesh::BoundDelegateTree) -> Result<Self, Self::Error> {
        let path = Path::try_from(required(&tree.path, "BoundDelegateTree.path")?)?;
        let dentry = tree.dentry.as_ref().map_or_else(|| Ok(Dentry::nop()), Dentry::try_from)?;
        let node = match tree.node.as_ref().ok_or(ConvertError::MissingOneof("BoundDelegateTree.node"))? {
            bdt::Node::Delegate(child) => DelegateNode::Delegate(Box::new(DelegateTree::try_from(child.as_ref())?)),
            bdt::Node::Alt(alt) => {
                DelegateNode::Alt(alt.trees.iter().map(DelegateTree::try_from).collect::<Result<_, _>>()?)
            }
            bdt::Node::Union(union) => DelegateNode::Union(
                union
                    .trees
                    .iter()
                    .map(|w| {
                        let child = required(&w.tree, "BoundDelegateTree.Union.Weighted.tree")?;
                        Ok((weight_from(w.weight)?, DelegateTree::try_from(child)?))
                    })
                    .collect::<Result<_, ConvertError>>()?,
            ),
            bdt::Node::Leaf(leaf) => DelegateNode::Leaf(delegate_leaf_from(leaf)?),
            bdt::Node::Neg(_) => DelegateNode::Neg,
            bdt::Node::Fail(_) => DelegateNode::Fail,
            bdt::Node::Empty(_) => DelegateNode::Empty,
            bdt::Node::Exception(message) => {
                DelegateNode::Exception(message.strip_prefix(EXCEPTION_PREFIX).unwrap_or(message).to_string())
            }
            bdt::Node::Transformation(t) => DelegateNode::Transformation {
                name: t.name.clone(),
                bound: delegate_leaf_from(required(&t.leaf, "BoundDelegateTree.Transformation.leaf")?)?,
                tree: Box::new(DelegateTree::try_from(
                    required(&t.tree, "BoundDelegateTree.Transformation.tree")?.as_ref(),
                )?),
            },
        };
        Ok(DelegateTree { path, dentry, node })
    }
}

impl From<&DelegateTree> for mesh::DelegateTreeRsp {
    fn from(tree: &DelegateTree) -> Self {
        mesh::DelegateTreeRsp { tree: Some(tree.into()) }
    }
}

impl TryFrom<&mesh::DelegateTreeRsp> for DelegateTree {
    type Error = ConvertError;

    fn try_from(rsp: &mesh::DelegateTreeRsp) -> Result<Self, Self::Error> {
        DelegateTree::try_from(required(&rsp.tree, "DelegateTreeRsp.tree")?)
    }
}

// Replicas.

/// A metadata value as text, as namerd writes it: a JSON string without its quotes, anything
/// else as its JSON text.
fn metadata_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Metadata as written. Entries whose text is empty are left out: Linkerd's client drops them
/// anyway, and leaving them out keeps both ends seeing the same set.
fn metadata_to_proto(meta: &Map<String, Value>) -> BTreeMap<String, String> {
    meta.iter().map(|(k, v)| (k.clone(), metadata_text(v))).filter(|(_, v)| !v.is_empty()).collect()
}

/// Metadata as read: every value is a JSON string, except the per-address weight, which is
/// read back as a number when it is one, so that [`Address::weight`] works on the client side.
fn metadata_from_proto(meta: &BTreeMap<String, String>) -> Map<String, Value> {
    meta.iter()
        .map(|(k, v)| {
            let value = match serde_json::from_str::<Value>(v) {
                Ok(Value::Number(n)) if k == ADDR_WEIGHT_KEY => {
                    // serde_json's own float parsing may be off by an ulp; Rust's is exact, so
                    // the weight comes back as the very number that was sent.
                    let exact = n.is_f64().then(|| v.parse().ok().and_then(serde_json::Number::from_f64)).flatten();
                    Value::Number(exact.unwrap_or(n))
                }
                _ => Value::String(v.clone()),
            };
            (k.clone(), value)
        })
        .collect()
}

impl From<&Address> for mesh::Endpoint {
    fn from(address: &Address) -> Self {
        let (family, bytes) = match address.ip {
            IpAddr::V4(ip) => (AddressFamily::Inet4, ip.octets().to_vec()),
            IpAddr::V6(ip) => (AddressFamily::Inet6, ip.octets().to_vec()),
        };
        mesh::Endpoint {
            inet_af: Some(family.into()),
            address: bytes,
            port: i32::from(address.port),
            meta: address.meta.get(NODE_NAME_KEY).map(|v| mesh::endpoint::Meta { node_name: metadata_text(v) }),
            metadata: metadata_to_proto(&address.meta),
        }
    }
}

impl TryFrom<&mesh::Endpoint> for Address {
    type Error = ConvertError;

    /// An absent address family is taken from the address length. `meta.nodeName` fills in the
    /// `nodeName` metadata key when `metadata` lacks it (older servers sent only the former).
    fn try_from(endpoint: &mesh::Endpoint) -> Result<Self, Self::Error> {
        let family = endpoint
            .inet_af
            .map(|af| AddressFamily::try_from(af).map_err(|_| ConvertError::UnknownAddressFamily(af)))
            .transpose()?;
        let bytes = endpoint.address.as_slice();
        let ip = if let Ok(octets) = <[u8; 4]>::try_from(bytes) {
            IpAddr::V4(Ipv4Addr::from(octets))
        } else if let Ok(octets) = <[u8; 16]>::try_from(bytes) {
            IpAddr::V6(Ipv6Addr::from(octets))
        } else {
            return Err(ConvertError::AddressLength(bytes.len()));
        };
        match (family, ip) {
            (Some(family @ AddressFamily::Inet4), IpAddr::V6(_))
            | (Some(family @ AddressFamily::Inet6), IpAddr::V4(_)) => {
                return Err(ConvertError::AddressFamilyMismatch { family, len: bytes.len() });
            }
            _ => {}
        }
        let port = u16::try_from(endpoint.port).map_err(|_| ConvertError::InvalidPort(endpoint.port))?;
        let mut meta = metadata_from_proto(&endpoint.metadata);
        if let Some(node) = endpoint.meta.as_ref().filter(|m| !m.node_name.is_empty()) {
            meta.entry(NODE_NAME_KEY).or_insert_with(|| Value::String(node.node_name.clone()));
        }
        Ok(Address { ip, port, meta })
    }
}

impl From<&Addr> for mesh::Replicas {
    fn from(addr: &Addr) -> Self {
        let result = match addr {
            Addr::Pending => replicas::Result::Pending(replicas::Pending {}),
            Addr::Neg => replicas::Result::Neg(replicas::Neg {}),
            Addr::Failed { cause } => replicas::Result::Failed(replicas::Failed { message: cause.clone() }),
            Addr::Bound { addrs, meta } => replicas::Result::Bound(replicas::Bound {
                endpoints: addrs.iter().map(Into::into).collect(),
                metadata: metadata_to_proto(meta),
            }),
        };
        mesh::Replicas { result: Some(result) }
    }
}

impl TryFrom<&mesh::Replicas> for Addr {
    type Error = ConvertError;

    fn try_from(replicas: &mesh::Replicas) -> Result<Self, Self::Error> {
        Ok(match replicas.result.as_ref().ok_or(ConvertError::MissingOneof("Replicas.result"))? {
            replicas::Result::Pending(_) => Addr::Pending,
            replicas::Result::Neg(_) => Addr::Neg,
            replicas::Result::Failed(failed) => Addr::Failed { cause: failed.message.clone() },
            replicas::Result::Bound(bound) => Addr::Bound {
                addrs: bound.endpoints.iter().map(Address::try_from).collect::<Result<_, _>>()?,
                meta: metadata_from_proto(&bound.metadata),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    fn p(s: &str) -> Path {
        s.parse().unwrap()
    }

    fn w(x: f64) -> Weight {
        Weight::new(x).unwrap()
    }

    fn bound(id: &str, residual: &str) -> BoundName {
        BoundName::new(p(id), p(residual))
    }

    /// The wire bytes of a field: its key (number and wire type) followed by `payload`.
    fn field(number: u32, wire_type: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        prost::encoding::encode_varint(u64::from(number << 3 | wire_type), &mut out);
        out.extend_from_slice(payload);
        out
    }

    /// A length-delimited field.
    fn len_field(number: u32, payload: &[u8]) -> Vec<u8> {
        let mut len = Vec::new();
        prost::encoding::encode_varint(payload.len() as u64, &mut len);
        len.extend_from_slice(payload);
        field(number, 2, &len)
    }

    #[test]
    fn paths_keep_raw_bytes_and_reject_empty_labels() {
        let path = Path::from_labels(vec![Label::new(*b"svc").unwrap(), Label::new(vec![0xff, 0x00, b'/']).unwrap()]);
        let message = mesh::Path::from(&path);
        assert_eq!(message.elems, vec![b"svc".to_vec(), vec![0xff, 0x00, b'/']]);
        assert_eq!(Path::try_from(&message).unwrap(), path);
        assert_eq!(Path::try_from(&mesh::Path::default()).unwrap(), Path::empty());
        let empty_label = mesh::Path { elems: vec![b"a".to_vec(), Vec::new()] };
        assert_eq!(Path::try_from(&empty_label), Err(ConvertError::EmptyLabel));
    }

    #[test]
    fn wildcards_travel_as_their_own_message() {
        let dtab: Dtab = r"/svc/*/\xff => /#/io.l5d.fs | ~; /a => 0.0 * /b & $ & !".parse().unwrap();
        let message = mesh::Dtab::from(&dtab);
        let elems = &message.dentries[0].prefix.as_ref().unwrap().elems;
        assert_eq!(elems[0].value, Some(elem::Value::Label(b"svc".to_vec())));
        assert_eq!(elems[1].value, Some(elem::Value::Wildcard(elem::Wildcard {})));
        assert_eq!(elems[2].value, Some(elem::Value::Label(vec![0xff])));
        let decoded = mesh::Dtab::decode(message.encode_to_vec().as_slice()).unwrap();
        assert_eq!(Dtab::try_from(&decoded).unwrap(), dtab);
    }

    #[test]
    fn malformed_dtabs_are_errors() {
        let dentry = mesh::dtab::Dentry::from(&"/a => /b".parse::<Dentry>().unwrap());
        let mut no_prefix = dentry.clone();
        no_prefix.prefix = None;
        assert_eq!(Dentry::try_from(&no_prefix), Err(ConvertError::MissingField("Dtab.Dentry.prefix")));
        let mut no_dst = dentry.clone();
        no_dst.dst = None;
        assert_eq!(Dentry::try_from(&no_dst), Err(ConvertError::MissingField("Dtab.Dentry.dst")));
        let mut unset_elem = dentry.clone();
        unset_elem.prefix.as_mut().unwrap().elems.push(Elem { value: None });
        assert_eq!(Dentry::try_from(&unset_elem), Err(ConvertError::MissingOneof("Dtab.Dentry.Prefix.Elem.value")));
        let mut empty_label = dentry;
        empty_label.prefix.as_mut().unwrap().elems.push(Elem { value: Some(elem::Value::Label(Vec::new())) });
        assert_eq!(Dentry::try_from(&empty_label), Err(ConvertError::EmptyLabel));
    }

    #[test]
    fn malformed_name_trees_are_errors() {
        let unset = mesh::PathNameTree { node: None };
        assert_eq!(NameTree::<Path>::try_from(&unset), Err(ConvertError::MissingOneof("PathNameTree.node")));
        let no_id = mesh::PathNameTree { node: Some(pnt::Node::Leaf(pnt::Leaf { id: None })) };
        assert_eq!(NameTree::<Path>::try_from(&no_id), Err(ConvertError::MissingField("PathNameTree.Leaf.id")));
        let union = |weight, tree| mesh::PathNameTree {
            node: Some(pnt::Node::Union(pnt::Union { trees: vec![pnt::union::Weighted { weight, tree }] })),
        };
        let neg = Some(mesh::PathNameTree { node: Some(pnt::Node::Neg(pnt::Neg {})) });
        assert!(matches!(
            NameTree::<Path>::try_from(&union(Some(-1.0), neg.clone())),
            Err(ConvertError::InvalidWeight(_))
        ));
        assert!(matches!(
            NameTree::<Path>::try_from(&union(Some(f64::NAN), neg.clone())),
            Err(ConvertError::InvalidWeight(_))
        ));
        assert_eq!(
            NameTree::<Path>::try_from(&union(Some(1.0), None)),
            Err(ConvertError::MissingField("PathNameTree.Union.Weighted.tree"))
        );
        // A standard proto3 writer leaves out a weight of 0.0.
        assert_eq!(
            NameTree::<Path>::try_from(&union(None, neg)).unwrap(),
            NameTree::Union(vec![Weighted::new(w(0.0), NameTree::Neg)])
        );
    }

    #[test]
    fn union_weights_are_encoded_even_at_zero_and_one() {
        for weight in [0.0, 1.0] {
            let tree = NameTree::Union(vec![Weighted::new(w(weight), NameTree::Neg)]);
            let bytes = mesh::PathNameTree::from(&tree).encode_to_vec();
            // node.union(5) { trees(1) { weight(1): fixed64, tree(2) { node.neg(1) {} } } }
            let weighted = [field(1, 1, &weight.to_le_bytes()), len_field(2, &len_field(1, &[]))].concat();
            assert_eq!(bytes, len_field(5, &len_field(1, &weighted)), "weight {weight}");

            let bound: NameTree<BoundName> = NameTree::Union(vec![Weighted::new(w(weight), NameTree::Neg)]);
            let bytes = mesh::BoundNameTree::from(&bound).encode_to_vec();
            assert_eq!(bytes, len_field(5, &len_field(1, &weighted)), "bound weight {weight}");

            let delegate = DelegateTree {
                path: Path::empty(),
                dentry: Dentry::nop(),
                node: DelegateNode::Union(vec![(
                    w(weight),
                    DelegateTree { path: Path::empty(), dentry: Dentry::nop(), node: DelegateNode::Neg },
                )]),
            };
            let message = mesh::BoundDelegateTree::from(&delegate);
            let bdt::Node::Union(union) = message.node.as_ref().unwrap() else { panic!("a union") };
            let bytes = union.trees[0].encode_to_vec();
            assert_eq!(bytes[..9], field(1, 1, &weight.to_le_bytes())[..], "delegate weight {weight}");
        }
    }

    #[test]
    fn bound_leaves_always_carry_a_residual() {
        let tree: NameTree<BoundName> = NameTree::Leaf(bound("/$/inet/127.0.0.1/80", "/"));
        let bytes = mesh::BoundNameTree::from(&tree).encode_to_vec();
        let id = mesh::Path::from(&p("/$/inet/127.0.0.1/80")).encode_to_vec();
        // node.leaf(6) { id(1), residual(2) {} }
        assert_eq!(bytes, len_field(6, &[len_field(1, &id), len_field(2, &[])].concat()));
        let back = NameTree::<BoundName>::try_from(&mesh::BoundNameTree::decode(bytes.as_slice()).unwrap()).unwrap();
        assert_eq!(back, tree);
    }

    #[test]
    fn bound_leaves_get_the_weight_of_their_innermost_union_branch() {
        let leaf = |id: &str| NameTree::Leaf(bound(id, "/"));
        let tree: NameTree<BoundName> = NameTree::Alt(vec![
            leaf("/#/a"),
            NameTree::Union(vec![
                Weighted::new(w(0.25), NameTree::Alt(vec![leaf("/#/b"), leaf("/#/c")])),
                Weighted::new(w(3.0), NameTree::Union(vec![Weighted::new(w(0.0), leaf("/#/d"))])),
            ]),
        ]);
        let decoded = NameTree::<BoundLeaf>::try_from(&mesh::BoundNameTree::from(&tree)).unwrap();
        let weights: Vec<_> = decoded.leaves().iter().map(|l| (l.name.id().to_string(), l.weight)).collect();
        assert_eq!(
            weights,
            vec![
                ("/#/a".to_string(), None),
                ("/#/b".to_string(), Some(w(0.25))),
                ("/#/c".to_string(), Some(w(0.25))),
                ("/#/d".to_string(), Some(w(0.0))),
            ]
        );
        assert_eq!(mesh::BoundNameTree::from(&decoded), mesh::BoundNameTree::from(&tree));
    }

    #[test]
    fn bound_trees_from_binding_survive_the_wire() {
        let dtab: Dtab = "/svc => /$/inet/127.0.0.1; /neg => ~; /svc/web => 0.9 * /svc/8080 & 0.1 * (/neg | /svc/8081)"
            .parse()
            .unwrap();
        let binding =
            waymark_dtab::bind_path(&dtab, &waymark_dtab::Namers::new(), &p("/svc/web/x"), Default::default());
        let tree = binding.tree().unwrap();
        let rsp = mesh::BoundTreeRsp::from(tree);
        let decoded = mesh::BoundTreeRsp::decode(rsp.encode_to_vec().as_slice()).unwrap();
        assert_eq!(&NameTree::<BoundLeaf>::try_from(&decoded).unwrap(), tree);
        assert_eq!(tree.leaves().iter().filter_map(|l| l.weight).collect::<Vec<_>>(), [w(0.9), w(0.1)]);
    }

    #[test]
    fn a_weight_left_on_a_lone_leaf_is_not_sent() {
        // Binding keeps the weight of a branch whose union collapsed to it; the wire, like
        // Finagle, only has weights on union branches, and a lone branch's weight means nothing.
        let leaf = BoundLeaf { name: bound("/#/a", "/"), weight: Some(w(0.9)) };
        let decoded = NameTree::<BoundLeaf>::try_from(&mesh::BoundNameTree::from(&NameTree::Leaf(leaf))).unwrap();
        assert_eq!(decoded, NameTree::Leaf(BoundLeaf { name: bound("/#/a", "/"), weight: None }));
    }

    #[test]
    fn malformed_bound_trees_are_errors() {
        let leaf = |id, residual| mesh::BoundNameTree { node: Some(bnt::Node::Leaf(bnt::Leaf { id, residual })) };
        assert_eq!(
            NameTree::<BoundLeaf>::try_from(&leaf(None, None)),
            Err(ConvertError::MissingField("BoundNameTree.Leaf.id"))
        );
        // An absent residual is the empty path, as Linkerd's client reads it.
        assert_eq!(
            NameTree::<BoundName>::try_from(&leaf(Some((&p("/#/a")).into()), None)).unwrap(),
            NameTree::Leaf(bound("/#/a", "/"))
        );
        assert_eq!(
            NameTree::<BoundName>::try_from(&mesh::BoundNameTree::default()),
            Err(ConvertError::MissingOneof("BoundNameTree.node"))
        );
        assert_eq!(
            NameTree::<BoundLeaf>::try_from(&mesh::BoundTreeRsp::default()),
            Err(ConvertError::MissingField("BoundTreeRsp.tree"))
        );
    }

    #[test]
    fn the_delegate_root_carries_the_nop_dentry() {
        let tree = DelegateTree {
            path: p("/svc/web"),
            dentry: Dentry::nop(),
            node: DelegateNode::Leaf(bound("/$/inet/127.0.0.1/80", "/")),
        };
        let message = mesh::BoundDelegateTree::from(&tree);
        let dentry = message.dentry.as_ref().unwrap();
        let prefix = dentry.prefix.as_ref().unwrap();
        assert_eq!(prefix.elems, vec![Elem { value: Some(elem::Value::Label(vec![0x2f])) }]);
        assert_eq!(dentry.dst, Some(mesh::PathNameTree { node: Some(pnt::Node::Neg(pnt::Neg {})) }));
        let bytes = message.encode_to_vec();
        // path(1), dentry(2) { prefix(1) { elems(1) { label(1) "/" } }, dst(2) { neg(1) {} } }, leaf(8) {...}
        let path = len_field(1, &mesh::Path::from(&p("/svc/web")).encode_to_vec());
        let prefix = len_field(1, &len_field(1, &len_field(1, b"/")));
        let dst = len_field(2, &len_field(1, &[]));
        assert!(bytes.starts_with(&[path, len_field(2, &[prefix, dst].concat())].concat()));
        // The leaf ends the message with an empty residual(2).
        assert!(bytes.ends_with(&len_field(2, &[])));
        let decoded = DelegateTree::try_from(&mesh::BoundDelegateTree::decode(bytes.as_slice()).unwrap()).unwrap();
        assert_eq!(decoded, tree);
    }

    #[test]
    fn delegate_trees_round_trip_with_exceptions_and_transformations() {
        let at = |path: &str, dentry: &str, node| DelegateTree { path: p(path), dentry: dentry.parse().unwrap(), node };
        let tree = DelegateTree {
            path: p("/svc/web"),
            dentry: Dentry::nop(),
            node: DelegateNode::Alt(vec![
                at("/#/io.l5d.k8s/web", "/svc=>/#/io.l5d.k8s", DelegateNode::Exception("boom".into())),
                at(
                    "/#/io.l5d.fs/web",
                    "/svc=>/#/io.l5d.fs",
                    DelegateNode::Transformation {
                        name: "io.l5d.port/4141".into(),
                        bound: bound("/#/io.l5d.fs/web", "/"),
                        tree: Box::new(at(
                            "/%/io.l5d.port/4141/#/io.l5d.fs/web",
                            "/svc=>/#/io.l5d.fs",
                            DelegateNode::Leaf(bound("/%/io.l5d.port/4141/#/io.l5d.fs/web", "/rest")),
                        )),
                    },
                ),
                at("/", "/svc=>~", DelegateNode::Neg),
                at("/x", "/svc=>/x", DelegateNode::Delegate(Box::new(at("/x", "/x=>!", DelegateNode::Fail)))),
                at("/y", "/svc=>/y", DelegateNode::Empty),
            ]),
        };
        let message = mesh::DelegateTreeRsp::from(&tree);
        let bdt::Node::Alt(alt) = message.tree.as_ref().unwrap().node.as_ref().unwrap() else { panic!("an alt") };
        assert_eq!(alt.trees[0].node, Some(bdt::Node::Exception("BoundDelegateTree Exception: boom".into())));
        assert!(alt.trees[1].dentry.is_some(), "transformations carry their dentry");
        let decoded = mesh::DelegateTreeRsp::decode(message.encode_to_vec().as_slice()).unwrap();
        assert_eq!(DelegateTree::try_from(&decoded).unwrap(), tree);
    }

    #[test]
    fn namerds_delegate_trees_decode_despite_its_omissions() {
        // namerd leaves out the dentry of transformation nodes.
        let tree = mesh::BoundDelegateTree {
            path: Some((&p("/a")).into()),
            dentry: None,
            node: Some(bdt::Node::Exception("no prefix".into())),
        };
        let decoded = DelegateTree::try_from(&tree).unwrap();
        assert_eq!(decoded.dentry, Dentry::nop());
        assert_eq!(decoded.node, DelegateNode::Exception("no prefix".into()));
        let mut no_path = tree.clone();
        no_path.path = None;
        assert_eq!(DelegateTree::try_from(&no_path), Err(ConvertError::MissingField("BoundDelegateTree.path")));
        let mut no_node = tree;
        no_node.node = None;
        assert_eq!(DelegateTree::try_from(&no_node), Err(ConvertError::MissingOneof("BoundDelegateTree.node")));
    }

    fn address(ip: &str, port: u16, meta: Value) -> Address {
        let Value::Object(meta) = meta else { panic!("an object") };
        Address { ip: ip.parse().unwrap(), port, meta }
    }

    #[test]
    fn ipv4_endpoints_encode_their_address_family() {
        let endpoint = mesh::Endpoint::from(&address("10.0.0.1", 8080, serde_json::json!({})));
        assert_eq!(endpoint.inet_af, Some(AddressFamily::Inet4 as i32));
        assert_eq!(endpoint.address, vec![10, 0, 0, 1]);
        let bytes = endpoint.encode_to_vec();
        // inet_af(1) = 0 as a varint, then address(2), then port(3).
        let expected = [field(1, 0, &[0]), len_field(2, &[10, 0, 0, 1]), field(3, 0, &[0x90, 0x3f])].concat();
        assert_eq!(bytes, expected);

        let v6 = mesh::Endpoint::from(&address("::1", 1, serde_json::json!({})));
        assert_eq!(v6.inet_af, Some(AddressFamily::Inet6 as i32));
        assert_eq!(v6.address.len(), 16);
    }

    #[test]
    fn metadata_is_stringified_and_weights_come_back_as_numbers() {
        let addr = Addr::Bound {
            addrs: vec![address(
                "192.168.1.2",
                80,
                serde_json::json!({
                    "nodeName": "node-1",
                    "endpoint_addr_weight": 2.5,
                    "authority": "web.example",
                    "zone": "",
                    "nested": {"a": [1, true]},
                }),
            )],
            meta: serde_json::json!({"count": 3, "name": "web", "none": null}).as_object().unwrap().clone(),
        };
        let replicas = mesh::Replicas::from(&addr);
        let Some(replicas::Result::Bound(bound)) = &replicas.result else { panic!("bound") };
        let endpoint = &bound.endpoints[0];
        assert_eq!(endpoint.meta, Some(mesh::endpoint::Meta { node_name: "node-1".into() }));
        let text = |m: &BTreeMap<String, String>| m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>();
        assert_eq!(
            text(&endpoint.metadata),
            ["authority=web.example", "endpoint_addr_weight=2.5", r#"nested={"a":[1,true]}"#, "nodeName=node-1"]
        );
        assert_eq!(text(&bound.metadata), ["count=3", "name=web", "none=null"]);

        let back = Addr::try_from(&mesh::Replicas::decode(replicas.encode_to_vec().as_slice()).unwrap()).unwrap();
        let Addr::Bound { addrs, meta } = back else { panic!("bound") };
        assert_eq!(addrs[0].weight(), 2.5);
        assert_eq!(addrs[0].meta["endpoint_addr_weight"], serde_json::json!(2.5));
        assert_eq!(addrs[0].meta["nested"], serde_json::json!(r#"{"a":[1,true]}"#));
        assert_eq!(addrs[0].meta["nodeName"], serde_json::json!("node-1"));
        assert_eq!(meta["count"], serde_json::json!("3"));
    }

    #[test]
    fn node_name_fills_in_missing_metadata() {
        let endpoint = mesh::Endpoint {
            inet_af: None,
            address: vec![127, 0, 0, 1],
            port: 80,
            meta: Some(mesh::endpoint::Meta { node_name: "n1".into() }),
            metadata: BTreeMap::new(),
        };
        let address = Address::try_from(&endpoint).unwrap();
        assert_eq!(address.socket_addr(), "127.0.0.1:80".parse().unwrap());
        assert_eq!(address.meta["nodeName"], serde_json::json!("n1"));
    }

    #[test]
    fn replica_states_round_trip() {
        for addr in [
            Addr::Pending,
            Addr::Neg,
            Addr::Failed { cause: "kaboom".into() },
            Addr::bound([]),
            Addr::bound(["[2001:db8::1]:443".parse().unwrap(), "10.1.2.3:65535".parse().unwrap()]),
        ] {
            let bytes = mesh::Replicas::from(&addr).encode_to_vec();
            assert_eq!(Addr::try_from(&mesh::Replicas::decode(bytes.as_slice()).unwrap()).unwrap(), addr);
        }
    }

    #[test]
    fn malformed_endpoints_are_errors() {
        let good = mesh::Endpoint::from(&address("10.0.0.1", 80, serde_json::json!({})));
        let with = |f: &dyn Fn(&mut mesh::Endpoint)| {
            let mut e = good.clone();
            f(&mut e);
            Address::try_from(&e)
        };
        assert_eq!(with(&|e| e.address = vec![1, 2, 3]), Err(ConvertError::AddressLength(3)));
        assert_eq!(with(&|e| e.address = Vec::new()), Err(ConvertError::AddressLength(0)));
        assert_eq!(with(&|e| e.inet_af = Some(7)), Err(ConvertError::UnknownAddressFamily(7)));
        assert_eq!(
            with(&|e| e.inet_af = Some(AddressFamily::Inet6 as i32)),
            Err(ConvertError::AddressFamilyMismatch { family: AddressFamily::Inet6, len: 4 })
        );
        assert_eq!(with(&|e| e.port = 65536), Err(ConvertError::InvalidPort(65536)));
        assert_eq!(with(&|e| e.port = -1), Err(ConvertError::InvalidPort(-1)));
        assert_eq!(Addr::try_from(&mesh::Replicas::default()), Err(ConvertError::MissingOneof("Replicas.result")));
    }

    #[test]
    fn versions_are_raw_bytes() {
        let versioned = VersionedDtab { version: vec![0, 1, 0xfe], dtab: "/a=>/b".parse().unwrap() };
        let rsp = mesh::DtabRsp::from(&versioned);
        assert_eq!(rsp.dtab.as_ref().unwrap().version.as_ref().unwrap().id, vec![0, 1, 0xfe]);
        let decoded = mesh::DtabRsp::decode(rsp.encode_to_vec().as_slice()).unwrap();
        assert_eq!(VersionedDtab::try_from(&decoded).unwrap(), versioned);
        let no_dtab = mesh::VersionedDtab { version: None, dtab: None };
        assert_eq!(VersionedDtab::try_from(&no_dtab), Err(ConvertError::MissingField("VersionedDtab.dtab")));
        let no_version = mesh::VersionedDtab { version: None, dtab: Some(mesh::Dtab::default()) };
        assert_eq!(
            VersionedDtab::try_from(&no_version).unwrap(),
            VersionedDtab { version: Vec::new(), dtab: Dtab::empty() }
        );
    }

    #[test]
    fn malformed_messages_are_invalid_arguments() {
        let status = tonic::Status::from(ConvertError::EmptyLabel);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "a path label may not be empty");
    }
}
