//! What `waymark-proxy` links: the router and what it needs, and none of the control plane.
//! The list is `cargo tree`'s, for this package alone (as `cargo build -p waymark-proxy`
//! resolves it), so a dependency that creeps in through a feature shows here too.

use std::process::Command;

/// Crates that must never be in a sidecar: the namer and its stores, their clients, the
/// admin server's framework and the CLI's HTTP client.
const FORBIDDEN: [&str; 6] = ["waymark-namer", "waymark-store", "etcd-client", "kube", "axum", "ureq"];

#[test]
fn the_proxy_links_none_of_the_control_plane() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let output = Command::new(cargo)
        .args(["tree", "--package", "waymark-proxy", "--edges", "normal,build", "--prefix", "none"])
        .args(["--format", "{p}", "--manifest-path", concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")])
        .output()
        .expect("cargo runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "cargo tree failed: {stderr}");
    let tree = String::from_utf8(output.stdout).unwrap();
    let crates: Vec<&str> = tree.lines().filter_map(|line| line.split_whitespace().next()).collect();
    assert!(crates.contains(&"waymark-router"), "the tree is the proxy's: {tree}");
    let found: Vec<&&str> = crates
        .iter()
        .filter(|name| FORBIDDEN.iter().any(|bad| **name == *bad || name.starts_with(&format!("{bad}-"))))
        .collect();
    assert!(found.is_empty(), "waymark-proxy depends on {found:?}:\n{tree}");
}
