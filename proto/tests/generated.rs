//! Guards the committed protobuf bindings in `src/gen`.
//!
//! The bindings are generated from `protobuf/*.proto` with `protox` (a Rust protobuf compiler,
//! so no `protoc` binary is needed) and `tonic-prost-build`, and committed, so that building the
//! crate needs neither. This test generates them again into a temporary directory and fails if
//! anything differs from the committed files. To regenerate after changing a `.proto` file or
//! upgrading the generator:
//!
//! ```text
//! WAYMARK_REGENERATE=1 cargo test -p waymark-proto --test generated
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// The protobuf files, relative to the `protobuf` directory, which is also the include path
/// (the service files import `dtab.proto` by that name).
const PROTOS: &[&str] = &["dtab.proto", "interpreter.proto", "resolver.proto", "delegator.proto", "codec.proto"];

const REGENERATE: &str = "WAYMARK_REGENERATE";

#[test]
fn committed_bindings_match_the_protobuf_definitions() {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let committed_dir = crate_dir.join("src").join("gen");
    let scratch = tempfile::tempdir().expect("create a temporary directory");
    generate(&crate_dir.join("protobuf"), scratch.path());
    let fresh = read_dir(scratch.path());
    assert!(!fresh.is_empty(), "the generator wrote no files");

    if std::env::var_os(REGENERATE).is_some_and(|v| v == "1") {
        fs::create_dir_all(&committed_dir).expect("create src/gen");
        for name in read_dir(&committed_dir).keys() {
            fs::remove_file(committed_dir.join(name)).expect("remove a stale generated file");
        }
        for (name, contents) in &fresh {
            fs::write(committed_dir.join(name), contents).expect("write a generated file");
        }
        return;
    }

    let committed = read_dir(&committed_dir);
    let mut problems = Vec::new();
    for (name, contents) in &fresh {
        match committed.get(name) {
            None => problems.push(format!("src/gen/{name} is missing")),
            Some(old) if old != contents => problems.push(format!("src/gen/{name} is out of date")),
            Some(_) => {}
        }
    }
    problems
        .extend(committed.keys().filter(|name| !fresh.contains_key(*name)).map(|n| format!("src/gen/{n} is stale")));
    assert!(
        problems.is_empty(),
        "the committed protobuf bindings differ from what the .proto files generate:\n  {}\n\
         regenerate them with:\n  {REGENERATE}=1 cargo test -p waymark-proto --test generated\n\
         and commit the result",
        problems.join("\n  ")
    );
}

/// Compiles the protobuf files in `proto_dir` and writes the Rust bindings to `out_dir`.
fn generate(proto_dir: &Path, out_dir: &Path) {
    let descriptors =
        protox::compile(PROTOS, [proto_dir]).unwrap_or_else(|e| panic!("compiling the .proto files: {e}"));
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(true)
        // Ordered maps make encoding deterministic, which tests and caches can rely on.
        .btree_map(".")
        .emit_rerun_if_changed(false)
        .out_dir(out_dir)
        .compile_fds(descriptors)
        .unwrap_or_else(|e| panic!("generating the Rust bindings: {e}"));
}

/// The files in `dir` (which may not exist), by name.
fn read_dir(dir: &Path) -> BTreeMap<String, String> {
    let Ok(entries) = fs::read_dir(dir) else { return BTreeMap::new() };
    entries
        .map(|entry| {
            let entry = entry.expect("read a directory entry");
            let name = entry.file_name().into_string().expect("a UTF-8 file name");
            let contents = fs::read_to_string(entry.path()).expect("read a generated file");
            (name, contents)
        })
        .collect()
}
