//! parse(print(x)) == x, for generated paths, prefixes, name trees and dtabs.

use proptest::prelude::*;
use waymark_dtab::{Dentry, Dtab, Label, NameTree, Path, Prefix, PrefixElem, Weight, Weighted};

/// Labels mixing plain characters and arbitrary bytes, so that both printing forms (verbatim
/// and escaped) are exercised.
fn label() -> impl Strategy<Value = Label> {
    prop_oneof![
        "[0-9A-Za-z_:.#$%-]{1,8}".prop_map(|s| Label::new(s.into_bytes()).unwrap()),
        proptest::collection::vec(any::<u8>(), 1..6).prop_map(|b| Label::new(b).unwrap()),
    ]
}

fn path() -> impl Strategy<Value = Path> {
    proptest::collection::vec(label(), 0..5).prop_map(Path::from_labels)
}

fn prefix() -> impl Strategy<Value = Prefix> {
    let elem = prop_oneof![label().prop_map(PrefixElem::Label), Just(PrefixElem::Any)];
    proptest::collection::vec(elem, 0..5).prop_map(Prefix::new)
}

/// Weights with at most two decimals: the canonical form prints two, so other weights are
/// rounded by design.
fn weight() -> impl Strategy<Value = Weight> {
    (0u32..10_000, 0u32..100).prop_map(|(int, frac)| Weight::new(format!("{int}.{frac:02}").parse().unwrap()).unwrap())
}

/// Trees the parser can produce: alternatives and unions have at least two children.
fn tree() -> impl Strategy<Value = NameTree<Path>> {
    let leaf = prop_oneof![
        4 => path().prop_map(NameTree::Leaf),
        1 => Just(NameTree::Neg),
        1 => Just(NameTree::Fail),
        1 => Just(NameTree::Empty),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 2..4).prop_map(NameTree::Alt),
            proptest::collection::vec((weight(), inner), 2..4)
                .prop_map(|branches| NameTree::Union(branches.into_iter().map(|(w, t)| Weighted::new(w, t)).collect())),
        ]
    })
}

fn dtab() -> impl Strategy<Value = Dtab> {
    proptest::collection::vec((prefix(), tree()), 0..6)
        .prop_map(|entries| entries.into_iter().map(|(p, t)| Dentry::new(p, t)).collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn paths_round_trip(p in path()) {
        prop_assert_eq!(p.to_string().parse::<Path>().unwrap(), p);
    }

    #[test]
    fn prefixes_round_trip(p in prefix()) {
        prop_assert_eq!(p.to_string().parse::<Prefix>().unwrap(), p);
    }

    #[test]
    fn trees_round_trip(t in tree()) {
        let shown = t.to_string();
        prop_assert_eq!(shown.parse::<NameTree<Path>>().unwrap(), t, "shown as {}", shown);
    }

    #[test]
    fn dtabs_round_trip(d in dtab()) {
        let shown = d.to_string();
        prop_assert_eq!(shown.parse::<Dtab>().unwrap(), d, "shown as {}", shown);
    }

    #[test]
    fn simplification_is_idempotent_and_keeps_evaluation(t in tree()) {
        let simple = t.simplified();
        prop_assert_eq!(simple.simplified(), simple.clone());
        prop_assert_eq!(simple.eval(), t.eval());
    }

    #[test]
    fn parsing_never_panics(s in "\\PC{0,64}") {
        let _ = s.parse::<Dtab>();
        let _ = s.parse::<NameTree<Path>>();
        let _ = s.parse::<Path>();
    }
}
