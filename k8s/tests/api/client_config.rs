//! `waymark_k8s::client`: the configuration search, against the fake API server.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::Api;
use kube::api::ListParams;
use waymark_k8s::client::{ClientOptions, ConfigSource, KubeEnv, connect_with};
use waymark_test_support::TestCa;
use waymark_test_support::kube::{FakeApiServer, KubeconfigOptions, TokenUser};

/// An environment with nothing in it: no in-cluster variables, no KUBECONFIG, an empty home.
fn bare_env(dir: &Path) -> KubeEnv {
    KubeEnv { home: Some(dir.join("home")), service_account_dir: dir.join("serviceaccount"), ..KubeEnv::default() }
}

fn write_kubeconfig(fake: &FakeApiServer, path: &Path, namespace: Option<&str>) -> PathBuf {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let options = KubeconfigOptions { namespace: namespace.map(str::to_string), token: None };
    fake.write_kubeconfig(path, &options).unwrap();
    path.to_path_buf()
}

async fn namespaces(client: kube::Client) -> Vec<String> {
    Api::<Namespace>::all(client)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect()
}

#[tokio::test]
async fn kubeconfig_from_the_environment_reaches_the_fake() {
    let fake = FakeApiServer::shared();
    let dir = tempfile::tempdir().unwrap();
    let path = write_kubeconfig(fake, &dir.path().join("config"), Some("kube-system"));
    let env = KubeEnv { kubeconfig: Some(path.clone().into()), ..bare_env(dir.path()) };
    let (client, source) = connect_with(&ClientOptions::default(), &env).await.unwrap();
    assert_eq!(source, ConfigSource::KubeconfigEnv(vec![path]));
    assert_eq!(client.default_namespace(), "kube-system");
    assert!(namespaces(client).await.contains(&"default".to_string()));
}

#[tokio::test]
async fn kubeconfig_lists_merge_with_the_first_file_winning() {
    let fake = FakeApiServer::shared();
    let dir = tempfile::tempdir().unwrap();
    let first = write_kubeconfig(fake, &dir.path().join("first"), Some("kube-public"));
    // A second file whose current context would point elsewhere.
    let second = dir.path().join("second");
    std::fs::write(
        &second,
        "apiVersion: v1\nkind: Config\ncurrent-context: elsewhere\nclusters:\n- name: other\n  cluster:\n    server: http://127.0.0.1:1\ncontexts:\n- name: elsewhere\n  context:\n    cluster: other\n    user: other\nusers:\n- name: other\n  user: {}\n",
    )
    .unwrap();
    let joined = std::env::join_paths([&first, &second]).unwrap();
    let env = KubeEnv { kubeconfig: Some(joined), ..bare_env(dir.path()) };
    let (client, source) = connect_with(&ClientOptions::default(), &env).await.unwrap();
    assert_eq!(source, ConfigSource::KubeconfigEnv(vec![first, second]));
    assert_eq!(client.default_namespace(), "kube-public");
    assert!(!namespaces(client).await.is_empty());

    // An explicit context picks the other one.
    let env = KubeEnv {
        kubeconfig: Some(std::env::join_paths([dir.path().join("first"), dir.path().join("second")]).unwrap()),
        ..bare_env(dir.path())
    };
    let options = ClientOptions { kubeconfig: None, context: Some("elsewhere".into()) };
    let (client, _) = connect_with(&options, &env).await.unwrap();
    assert!(Api::<Namespace>::all(client).list(&ListParams::default()).await.is_err(), "nothing listens on port 1");
}

#[tokio::test]
async fn the_home_kubeconfig_comes_last_and_an_explicit_one_first() {
    let fake = FakeApiServer::shared();
    let dir = tempfile::tempdir().unwrap();
    let home_config = write_kubeconfig(fake, &dir.path().join("home").join(".kube").join("config"), None);
    let env = bare_env(dir.path());
    let (client, source) = connect_with(&ClientOptions::default(), &env).await.unwrap();
    assert_eq!(source, ConfigSource::HomeKubeconfig(home_config));
    assert!(!namespaces(client).await.is_empty());

    let explicit = write_kubeconfig(fake, &dir.path().join("explicit"), Some("kube-node-lease"));
    let env = KubeEnv { kubeconfig: Some(dir.path().join("missing").into()), ..bare_env(dir.path()) };
    let options = ClientOptions { kubeconfig: Some(explicit.clone()), context: None };
    let (client, source) = connect_with(&options, &env).await.unwrap();
    assert_eq!(source, ConfigSource::Explicit(explicit));
    assert_eq!(client.default_namespace(), "kube-node-lease");
}

#[tokio::test]
async fn in_cluster_uses_the_service_account_token_ca_and_namespace() {
    let ca = TestCa::new("fake cluster CA").unwrap();
    let server_cert = ca.issue(&["127.0.0.1", "kubernetes.default.svc"]).unwrap();
    let fake = FakeApiServer::builder().tls(server_cert, ca.cert_pem()).require_token().start().unwrap();
    fake.register_token("sa-token", TokenUser::service_account("team", "namer"));
    let dir = tempfile::tempdir().unwrap();
    let sa = dir.path().join("serviceaccount");
    std::fs::create_dir_all(&sa).unwrap();
    std::fs::write(sa.join("token"), "sa-token").unwrap();
    std::fs::write(sa.join("ca.crt"), ca.cert_pem()).unwrap();
    std::fs::write(sa.join("namespace"), "team").unwrap();
    // KUBECONFIG names a server that is not there: in a pod, the service account wins.
    let decoy = dir.path().join("decoy");
    std::fs::write(
        &decoy,
        "apiVersion: v1\nkind: Config\ncurrent-context: d\nclusters:\n- name: d\n  cluster:\n    server: http://127.0.0.1:1\ncontexts:\n- name: d\n  context:\n    cluster: d\n    user: d\nusers:\n- name: d\n  user: {}\n",
    )
    .unwrap();
    let env = KubeEnv {
        service_host: Some("127.0.0.1".into()),
        service_port: Some(fake.addr().port().to_string()),
        kubeconfig: Some(decoy.into()),
        home: None,
        service_account_dir: sa.clone(),
    };
    let (client, source) = connect_with(&ClientOptions::default(), &env).await.unwrap();
    assert_eq!(source, ConfigSource::InCluster);
    assert_eq!(client.default_namespace(), "team");
    Api::<ConfigMap>::default_namespaced(client.clone()).list(&ListParams::default()).await.unwrap();
    let users: Vec<String> = fake.requests().into_iter().map(|r| r.user).collect();
    assert!(users.iter().all(|u| u == "system:serviceaccount:team:namer"), "{users:?}");

    // Without the token the fake refuses, as a cluster does.
    std::fs::write(sa.join("token"), "revoked").unwrap();
    let (client, _) = connect_with(&ClientOptions::default(), &env).await.unwrap();
    let error = Api::<ConfigMap>::default_namespaced(client).list(&ListParams::default()).await.unwrap_err();
    assert!(matches!(error, kube::Error::Api(ref s) if s.code == 401), "{error}");
}
