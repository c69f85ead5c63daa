//! The Kubernetes store against the conformance suite every store passes, through the real
//! `kube` client and the fake API server (each case in a Kubernetes namespace of its own,
//! every "instance" a separate store over it, as namer replicas would be).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use waymark_k8s_store::{K8sStore, K8sStoreOptions};
use waymark_store::conformance::{Backend, conformance_tests};
use waymark_store::{DtabStore, ParseFailureMetrics};
use waymark_test_support::kube::FakeApiServer;

/// The shared fake, with the DTab CRD installed.
fn fake() -> &'static FakeApiServer {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    let fake = FakeApiServer::shared();
    INSTALLED.get_or_init(|| {
        fake.create(serde_json::to_value(waymark_k8s::dtab::crd()).unwrap()).unwrap();
    });
    fake
}

fn client(fake: &FakeApiServer) -> kube::Client {
    kube::Client::try_from(kube::Config::new(fake.url().parse().unwrap())).unwrap()
}

/// A Kubernetes namespace of its own for one case.
struct KubernetesBackend {
    namespace: String,
}

impl KubernetesBackend {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let namespace = format!("conformance-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        fake().create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})).unwrap();
        KubernetesBackend { namespace }
    }
}

#[async_trait]
impl Backend for KubernetesBackend {
    async fn open(&self, history_limit: usize) -> Arc<dyn DtabStore> {
        let store = K8sStore::start(K8sStoreOptions {
            client: client(fake()),
            namespace: self.namespace.clone(),
            history_limit,
            request_timeout: Duration::from_secs(10),
            parse_failures: ParseFailureMetrics::default(),
        });
        let mut health = store.health();
        tokio::time::timeout(Duration::from_secs(60), health.wait_for(|h| h.synced && h.available))
            .await
            .expect("the store syncs")
            .unwrap();
        Arc::new(store)
    }
}

conformance_tests!(
    #[tokio::test]
    KubernetesBackend::new()
);

/// Concurrent compare-and-swap through two instances: no update lost, none applied twice,
/// and history in the order the updates took effect, whichever instance recorded first.
#[tokio::test]
async fn concurrent_compare_and_swap_through_two_instances() {
    let backend = KubernetesBackend::new();
    let first = backend.open(200).await;
    let second = backend.open(200).await;
    waymark_store::conformance::cas_stress(first, second, 4, 25).await;
}
