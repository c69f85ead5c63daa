//! Every shipped example configuration loads and validates.

use waymark_namer::NamerConfig;
use waymark_namer::config::InterfaceConfig;
use waymark_store::StoreConfig;

fn load(name: &str) -> NamerConfig {
    let path = format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"));
    NamerConfig::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_memory_example_loads() {
    let config = load("memory.yaml");
    let StoreConfig::Memory(memory) = &config.storage else { panic!("a memory store") };
    assert_eq!(memory.namespaces.get("default").map(|d| d.trim()), Some("/svc => /#/io.l5d.fs ;"));
    assert_eq!(config.namers.len(), 2);
    assert_eq!(config.interfaces[0].addr(), "127.0.0.1:4180".parse().unwrap());
}

#[test]
fn the_file_example_loads() {
    let config = load("file.yaml");
    assert!(matches!(config.storage, StoreConfig::File(_)));
    assert_eq!(config.interpreter.max_depth, 100);
}

#[test]
fn the_etcd_example_loads() {
    let config = load("etcd.yaml");
    let StoreConfig::Etcd(etcd) = &config.storage else { panic!("an etcd store") };
    assert_eq!(etcd.endpoints, ["http://127.0.0.1:2379"]);
    assert!(matches!(config.interfaces[1], InterfaceConfig::Mesh { port: 4321, .. }));
}
