//! Guards the committed CRD manifest `deploy/crds/dtabs.l5d.io.yaml`, and checks that the API
//! server accepts it and serves `DTab` objects through it as namerd wrote them.
//!
//! The manifest is generated from `waymark_k8s::dtab::crd()`. This test generates it again and
//! fails on any difference. To regenerate after changing the type:
//!
//! ```text
//! WAYMARK_REGENERATE=1 cargo test -p waymark-k8s --test crd
//! ```

use std::path::PathBuf;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use serde_json::json;
use waymark_k8s::dtab::{self, DTab, DTabDentry};
use waymark_test_support::kube::FakeApiServer;

const REGENERATE: &str = "WAYMARK_REGENERATE";

fn manifest_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("deploy").join("crds").join("dtabs.l5d.io.yaml")
}

#[test]
fn the_committed_manifest_is_what_the_type_generates() {
    let fresh = dtab::crd_yaml();
    let path = manifest_path();
    if std::env::var_os(REGENERATE).is_some_and(|v| v == "1") {
        std::fs::write(&path, &fresh).expect("write the manifest");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "deploy/crds/dtabs.l5d.io.yaml differs from what waymark_k8s::dtab::crd() generates;\n\
         regenerate it with:\n  {REGENERATE}=1 cargo test -p waymark-k8s --test crd\nand commit the result"
    );
}

async fn client(fake: &FakeApiServer) -> Client {
    let config = kube::Config::new(fake.url().parse().expect("a URL"));
    Client::try_from(config).expect("a client")
}

#[tokio::test]
async fn the_api_server_accepts_the_manifest_and_serves_dtabs_through_it() -> anyhow::Result<()> {
    let fake = FakeApiServer::start()?;
    let client = client(&fake).await;
    let text = std::fs::read_to_string(manifest_path())?;
    let committed: CustomResourceDefinition = serde_saphyr::from_str(&text)?;
    Api::<CustomResourceDefinition>::all(client.clone()).create(&PostParams::default(), &committed).await?;

    let dtabs: Api<DTab> = Api::namespaced(client.clone(), "default");
    let dtab: waymark_dtab::Dtab = "/srv => /#/io.l5d.k8s/default/http; /svc => /srv".parse()?;
    let created = dtabs.create(&PostParams::default(), &DTab::new("internal", &dtab)).await?;
    assert_eq!(created.to_dtab()?, dtab);
    assert!(created.metadata.resource_version.is_some());

    // A namerd object, written as namerd wrote it, reads back unchanged.
    let raw: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), "default", &kube::api::ApiResource::erase::<DTab>(&()));
    let namerd: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "l5d.io/v1alpha1", "kind": "DTab", "metadata": {"name": "namerd"},
        "dentries": [{"prefix": "/svc", "dst": "/#/io.l5d.fs"}]
    }))?;
    raw.create(&PostParams::default(), &namerd).await?;
    let read = dtabs.get("namerd").await?;
    assert_eq!(read.dentries, vec![DTabDentry { prefix: "/svc".into(), dst: "/#/io.l5d.fs".into() }]);

    // The schema rejects a dentry without a destination.
    let bad = DTab { metadata: ObjectMeta { name: Some("bad".into()), ..ObjectMeta::default() }, dentries: vec![] };
    let mut bad_value = serde_json::to_value(&bad)?;
    bad_value["dentries"] = json!([{"prefix": "/svc"}]);
    let bad_object: kube::api::DynamicObject = serde_json::from_value(bad_value)?;
    let error = raw.create(&PostParams::default(), &bad_object).await.unwrap_err();
    match error {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 422);
            assert!(status.message.contains("dentries[0].dst: Required value"), "{}", status.message);
        }
        other => panic!("expected a 422, got {other}"),
    }
    Ok(())
}

#[test]
fn kubectl_applies_the_manifest_and_a_namerd_dtab() {
    let fake = FakeApiServer::start().expect("a fake API server");
    let kubectl = |args: &[&str], stdin: Option<&str>| {
        let mut child = fake
            .kubectl()
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("running kubectl");
        if let Some(input) = stdin {
            std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()).unwrap();
        }
        drop(child.stdin.take());
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    let manifest = manifest_path().display().to_string();
    kubectl(&["apply", "-f", &manifest], None);
    kubectl(&["wait", "--for", "condition=established", "--timeout=30s", "crd/dtabs.l5d.io"], None);
    // namerd's own example object.
    let dtab = "apiVersion: l5d.io/v1alpha1\nkind: DTab\nmetadata:\n  name: internal\n  namespace: default\ndentries:\n- {prefix: /srv, dst: /#/io.l5d.k8s/default/http}\n- {prefix: /svc, dst: /srv}\n";
    assert!(kubectl(&["apply", "-f", "-"], Some(dtab)).contains("dtab.l5d.io/internal created"));
    let stored = fake.get("l5d.io/v1alpha1", "DTab", Some("default"), "internal").expect("the DTab");
    let object: DTab = serde_json::from_value(stored).unwrap();
    assert_eq!(object.to_dtab().unwrap().to_string(), "/srv=>/#/io.l5d.k8s/default/http;/svc=>/srv");
    let listed = kubectl(&["get", "dtabs", "-o", "name"], None);
    assert_eq!(listed.trim(), "dtab.l5d.io/internal");
}
