//! The sidecar stays small: the router's dependency tree holds no Kubernetes client, no etcd
//! client, no store and no namer, while the namer's does hold Kubernetes (so that the check
//! below looks at a tree where it would find them).

use std::collections::BTreeSet;
use std::process::Command;

/// Every package in `package`'s dependency tree (normal, build and dev edges), by name.
fn tree(package: &str) -> BTreeSet<String> {
    let output = Command::new(env!("CARGO"))
        .args(["tree", "--offline", "--prefix", "none", "--format", "{p}", "-p", package])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(output.status.success(), "cargo tree -p {package}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn the_router_links_neither_kubernetes_nor_etcd_nor_the_store_nor_the_namer() {
    let namer = tree("waymark-namer");
    assert!(namer.contains("kube") && namer.contains("waymark-k8s-namer"), "the namer composes Kubernetes: {namer:?}");
    let router = tree("waymark-router");
    let forbidden = [
        "kube",
        "kube-client",
        "k8s-openapi",
        "waymark-k8s",
        "waymark-k8s-namer",
        "etcd-client",
        "waymark-store",
        "waymark-namer",
    ];
    let found: Vec<&str> = forbidden.iter().copied().filter(|name| router.contains(*name)).collect();
    assert!(found.is_empty(), "waymark-router depends on {found:?}");
}
