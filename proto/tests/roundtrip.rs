//! Property tests: every dtab value survives being written as a message, encoded, decoded and
//! read back, including labels that are not UTF-8, wildcards and zero weights.

use std::net::IpAddr;

use proptest::prelude::*;
use prost::Message;
use serde_json::{Map, Value};
use waymark_dtab::{
    Addr, Address, BoundLeaf, BoundName, DelegateNode, DelegateTree, Dentry, Dtab, Label, NameTree, Path, Prefix,
    PrefixElem, Weight, Weighted,
};
use waymark_proto::convert::VersionedDtab;
use waymark_proto::mesh;

fn label() -> impl Strategy<Value = Label> {
    prop_oneof![
        "[a-z0-9#$%.-]{1,6}".prop_map(|s| Label::try_from(s.as_str()).unwrap()),
        prop::collection::vec(any::<u8>(), 1..5).prop_map(|b| Label::new(b).unwrap()),
    ]
}

fn path() -> impl Strategy<Value = Path> {
    prop::collection::vec(label(), 0..4).prop_map(Path::from_labels)
}

fn prefix() -> impl Strategy<Value = Prefix> {
    let elem = prop_oneof![label().prop_map(PrefixElem::Label), Just(PrefixElem::Any)];
    prop::collection::vec(elem, 0..4).prop_map(Prefix::new)
}

fn weight() -> impl Strategy<Value = Weight> {
    prop_oneof![Just(0.0), Just(1.0), 0.0..1000.0f64, any::<f64>().prop_filter("finite", |w| w.is_finite())]
        .prop_map(|w| Weight::new(w.abs()).unwrap())
}

/// A name tree of any shape (including empty and one-branch alternatives and unions), with
/// leaves from `leaf`.
fn tree<T: std::fmt::Debug + Clone + 'static>(
    leaf: impl Strategy<Value = T> + 'static,
) -> impl Strategy<Value = NameTree<T>> {
    let base =
        prop_oneof![leaf.prop_map(NameTree::Leaf), Just(NameTree::Neg), Just(NameTree::Fail), Just(NameTree::Empty)];
    base.prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(NameTree::Alt),
            prop::collection::vec((weight(), inner).prop_map(|(w, t)| Weighted::new(w, t)), 0..3)
                .prop_map(NameTree::Union),
        ]
    })
}

fn dentry() -> impl Strategy<Value = Dentry> {
    prop_oneof![Just(Dentry::nop()), (prefix(), tree(path())).prop_map(|(p, t)| Dentry::new(p, t))]
}

fn bound_name() -> impl Strategy<Value = BoundName> {
    (path(), path()).prop_map(|(id, residual)| BoundName::new(id, residual))
}

/// `tree`'s leaves with the weight of their innermost enclosing union branch, as binding
/// gives them.
fn with_weights(tree: &NameTree<BoundName>, weight: Option<Weight>) -> NameTree<BoundLeaf> {
    match tree {
        NameTree::Leaf(name) => NameTree::Leaf(BoundLeaf { name: name.clone(), weight }),
        NameTree::Alt(trees) => NameTree::Alt(trees.iter().map(|t| with_weights(t, weight)).collect()),
        NameTree::Union(branches) => NameTree::Union(
            branches.iter().map(|b| Weighted::new(b.weight, with_weights(&b.tree, Some(b.weight)))).collect(),
        ),
        NameTree::Neg => NameTree::Neg,
        NameTree::Fail => NameTree::Fail,
        NameTree::Empty => NameTree::Empty,
    }
}

fn delegate_tree() -> impl Strategy<Value = DelegateTree> {
    let node_at = |node: BoxedStrategy<DelegateNode>| {
        (path(), dentry(), node).prop_map(|(path, dentry, node)| DelegateTree { path, dentry, node })
    };
    let base = prop_oneof![
        bound_name().prop_map(DelegateNode::Leaf),
        Just(DelegateNode::Neg),
        Just(DelegateNode::Fail),
        Just(DelegateNode::Empty),
        ".{0,12}".prop_map(DelegateNode::Exception),
    ]
    .boxed();
    node_at(base).prop_recursive(4, 24, 3, move |inner| {
        let node = prop_oneof![
            inner.clone().prop_map(|t| DelegateNode::Delegate(Box::new(t))),
            prop::collection::vec(inner.clone(), 0..3).prop_map(DelegateNode::Alt),
            prop::collection::vec((weight(), inner.clone()), 0..3).prop_map(DelegateNode::Union),
            (".{0,12}", bound_name(), inner).prop_map(|(name, bound, tree)| DelegateNode::Transformation {
                name,
                bound,
                tree: Box::new(tree),
            }),
        ]
        .boxed();
        node_at(node)
    })
}

fn address() -> impl Strategy<Value = Address> {
    let ip = prop_oneof![any::<[u8; 4]>().prop_map(IpAddr::from), any::<[u8; 16]>().prop_map(IpAddr::from)];
    // Values travel as text, so only non-empty strings (and the numeric weight) come back as
    // they went.
    let meta = prop::collection::btree_map("[a-zA-Z_]{1,8}", ".{1,8}", 0..3);
    (ip, any::<u16>(), meta, prop::option::of(0.0..100.0f64)).prop_map(|(ip, port, meta, weight)| {
        let mut meta: Map<String, Value> = meta.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
        if let Some(w) = weight {
            meta.insert(waymark_dtab::ADDR_WEIGHT_KEY.into(), w.into());
        }
        Address { ip, port, meta }
    })
}

fn addr() -> impl Strategy<Value = Addr> {
    let meta = prop::collection::btree_map("[a-z]{1,8}", ".{1,8}", 0..3)
        .prop_map(|m| m.into_iter().map(|(k, v)| (k, Value::String(v))).collect::<Map<_, _>>());
    prop_oneof![
        Just(Addr::Pending),
        Just(Addr::Neg),
        ".{0,12}".prop_map(|cause| Addr::Failed { cause }),
        (prop::collection::vec(address(), 0..4), meta).prop_map(|(addrs, meta)| Addr::Bound { addrs, meta }),
    ]
}

/// Encodes `message` and decodes it again, as a peer would receive it.
fn delegate_json(tree: &DelegateTree) -> String {
    serde_json::to_string(&waymark_dtab::json::DelegateJson::from_tree(tree, &mut |_| None)).unwrap()
}

/// The length of the longest dentry text in a delegation tree.
fn longest_dentry(tree: &DelegateTree) -> usize {
    let children: Vec<&DelegateTree> = match &tree.node {
        DelegateNode::Delegate(child) => vec![child],
        DelegateNode::Alt(trees) => trees.iter().collect(),
        DelegateNode::Union(branches) => branches.iter().map(|(_, t)| t).collect(),
        DelegateNode::Transformation { tree, .. } => vec![tree],
        _ => Vec::new(),
    };
    children.into_iter().map(longest_dentry).max().unwrap_or(0).max(tree.dentry.to_string().len())
}

fn wire<M: Message + Default>(message: M) -> M {
    M::decode(message.encode_to_vec().as_slice()).expect("a message we encoded decodes")
}

proptest! {
    #[test]
    fn paths_round_trip(p in path()) {
        prop_assert_eq!(Path::try_from(&wire(mesh::Path::from(&p))).unwrap(), p);
    }

    #[test]
    fn dtabs_round_trip(dentries in prop::collection::vec(dentry(), 0..4)) {
        let dtab = Dtab::new(dentries);
        prop_assert_eq!(Dtab::try_from(&wire(mesh::Dtab::from(&dtab))).unwrap(), dtab);
    }

    #[test]
    fn path_name_trees_round_trip(t in tree(path())) {
        prop_assert_eq!(NameTree::<Path>::try_from(&wire(mesh::PathNameTree::from(&t))).unwrap(), t);
    }

    #[test]
    fn bound_trees_round_trip_with_their_leaf_weights(t in tree(bound_name())) {
        let message = wire(mesh::BoundNameTree::from(&t));
        prop_assert_eq!(&NameTree::<BoundName>::try_from(&message).unwrap(), &t);
        let leaves = with_weights(&t, None);
        prop_assert_eq!(NameTree::<BoundLeaf>::try_from(&wire(mesh::BoundNameTree::from(&leaves))).unwrap(), leaves);
    }

    #[test]
    fn delegate_trees_round_trip(t in delegate_tree()) {
        let read = DelegateTree::try_from(&wire(mesh::BoundDelegateTree::from(&t))).unwrap();
        // A long dentry travels once, on the first node it produced: what is shown survives.
        prop_assert_eq!(delegate_json(&read), delegate_json(&t));
        if longest_dentry(&t) <= waymark_dtab::SHARED_DENTRY_BYTES {
            prop_assert_eq!(read, t);
        }
    }

    #[test]
    fn replicas_round_trip(a in addr()) {
        prop_assert_eq!(Addr::try_from(&wire(mesh::Replicas::from(&a))).unwrap(), a);
    }

    #[test]
    fn versioned_dtabs_round_trip(version in prop::collection::vec(any::<u8>(), 0..8), dentries in prop::collection::vec(dentry(), 0..3)) {
        let v = VersionedDtab { version, dtab: Dtab::new(dentries) };
        prop_assert_eq!(VersionedDtab::try_from(&wire(mesh::DtabRsp::from(&v))).unwrap(), v);
    }
}

/// A dentry with thousands of alternatives is carried once, not by every node it produced,
/// and the tree read back shows the same as the tree written.
#[test]
fn a_wide_delegation_is_carried_in_a_message_linear_in_the_dtab() {
    let dst: Vec<String> = (0..5_000).map(|i| format!("/a{i}")).collect();
    let dtab: Dtab = format!("/svc=>{}", dst.join(" | ")).parse().unwrap();
    let tree = waymark_dtab::delegate(&dtab, &waymark_dtab::Namers::new(), &"/svc".parse().unwrap(), 100).unwrap();
    let message = mesh::BoundDelegateTree::from(&tree);
    let encoded = message.encode_to_vec();
    let dentry_bytes = mesh::dtab::Dentry::from(&dtab.dentries()[0]).encode_to_vec().len();
    assert!(encoded.len() < 2 * dentry_bytes + 100 * 5_000, "{} bytes", encoded.len());

    let read = DelegateTree::try_from(&wire(message)).unwrap();
    let json = |t: &DelegateTree| serde_json::to_string(&waymark_dtab::json::DelegateJson::from_tree(t, &mut |_| None));
    assert_eq!(json(&read).unwrap(), json(&tree).unwrap());
}
