//! What the Kubernetes store does beyond the conformance suite: namerd's objects carry over,
//! `kubectl apply` is a change like any other (watched, and in history), names Kubernetes
//! would refuse still work, dentries edited into nonsense keep the last good dtab, and the
//! store's watch survives closed watches, a compacted history, an unreachable API server
//! and a restart, reporting unavailability at once.

use std::io::Write as _;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;
use waymark_k8s_store::{K8sStore, K8sStoreOptions};
use waymark_store::{ChangeMeta, DtabStore, Namespace, ParseFailureMetrics, StoreError, StoreHealth, VersionedDtab};
use waymark_test_support::kube::{FakeApiServer, RequestFilter};

const DEADLINE: Duration = Duration::from_secs(60);

fn ns(s: &str) -> Namespace {
    s.parse().unwrap()
}

fn install_crd(fake: &FakeApiServer) {
    fake.create(serde_json::to_value(waymark_k8s::dtab::crd()).unwrap()).unwrap();
}

/// The shared fake with the CRD, and a Kubernetes namespace of the test's own.
fn shared_namespace() -> (&'static FakeApiServer, String) {
    static INSTALLED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let fake = FakeApiServer::shared();
    INSTALLED.get_or_init(|| install_crd(fake));
    let namespace = format!("store-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    fake.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})).unwrap();
    (fake, namespace)
}

async fn open(fake: &FakeApiServer, namespace: &str, parse_failures: ParseFailureMetrics) -> K8sStore {
    let store = K8sStore::start(K8sStoreOptions {
        client: kube::Client::try_from(kube::Config::new(fake.url().parse().unwrap())).unwrap(),
        namespace: namespace.to_string(),
        history_limit: 10,
        request_timeout: Duration::from_secs(2),
        parse_failures,
    });
    health_until(&store, "synced", |h| h.synced && h.available).await;
    store
}

async fn health_until(store: &K8sStore, what: &str, check: impl Fn(&StoreHealth) -> bool) -> StoreHealth {
    let mut rx = store.health();
    let reached = tokio::time::timeout(DEADLINE, rx.wait_for(|h| check(h))).await.map(|r| r.map(|h| h.clone()));
    match reached {
        Ok(Ok(h)) => h,
        _ => panic!("the store never became {what}: {:?}", *rx.borrow()),
    }
}

async fn watch_until(
    rx: &mut watch::Receiver<Option<VersionedDtab>>,
    what: &str,
    check: impl Fn(Option<&VersionedDtab>) -> bool,
) -> Option<VersionedDtab> {
    let reached =
        tokio::time::timeout(DEADLINE, rx.wait_for(|v| check(v.as_ref()))).await.map(|r| r.map(|v| v.clone()));
    match reached {
        Ok(Ok(v)) => v,
        _ => panic!("the watch never showed {what}: {:?}", *rx.borrow()),
    }
}

fn dtab_text(v: Option<&VersionedDtab>) -> Option<String> {
    v.map(|v| v.dtab.to_string())
}

/// `kubectl apply -f -` of `yaml` in `namespace`.
fn kubectl_apply(fake: &FakeApiServer, namespace: &str, yaml: &str) {
    let mut child = fake
        .kubectl()
        .args(["apply", "-n", namespace, "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    child.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "kubectl apply: {}", String::from_utf8_lossy(&output.stderr));
}

#[tokio::test]
async fn namerd_objects_and_kubectl_apply_are_changes_like_any_other() {
    let (fake, namespace) = shared_namespace();
    // A namerd user's object, applied as namerd's documentation shows it.
    kubectl_apply(
        fake,
        &namespace,
        "apiVersion: l5d.io/v1alpha1\nkind: DTab\nmetadata: {name: internal}\ndentries:\n- {prefix: /srv, dst: /#/io.l5d.k8s/default/http}\n- {prefix: /svc, dst: /srv}\n",
    );
    let store = open(fake, &namespace, ParseFailureMetrics::default()).await;
    let first = store.get(&ns("internal")).await.unwrap();
    assert_eq!(first.dtab.to_string(), "/srv=>/#/io.l5d.k8s/default/http;/svc=>/srv");

    let mut rx = store.watch(&ns("internal"));
    let version = store
        .update(&ns("internal"), &"/svc=>/srv/v1".parse().unwrap(), &first.version, &ChangeMeta::by("alice"))
        .await
        .unwrap();
    kubectl_apply(
        fake,
        &namespace,
        "apiVersion: l5d.io/v1alpha1\nkind: DTab\nmetadata: {name: internal}\ndentries:\n- {prefix: /svc, dst: /srv/v2}\n",
    );
    let applied =
        watch_until(&mut rx, "the kubectl change", |v| dtab_text(v).as_deref() == Some("/svc=>/srv/v2")).await;
    assert_ne!(applied.unwrap().version, version);
    // The change made with kubectl is recorded, without an author, above alice's.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let history = store.history(&ns("internal")).await.unwrap();
        let summary: Vec<(String, Option<String>)> = history
            .iter()
            .map(|e| (e.dtab.as_ref().map(ToString::to_string).unwrap_or_default(), e.author.clone()))
            .collect();
        if summary.first().is_some_and(|(d, _)| d == "/svc=>/srv/v2") {
            assert_eq!(summary[0].1, None, "{summary:?}");
            assert_eq!(summary[1], ("/svc=>/srv/v1".to_string(), Some("alice".to_string())), "{summary:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the kubectl change never reached history: {summary:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A stale version, from before the kubectl change, is refused.
    let stale = store.update(&ns("internal"), &"/svc=>/x".parse().unwrap(), &version, &ChangeMeta::default()).await;
    assert_eq!(stale, Err(StoreError::Conflict));
}

#[tokio::test]
async fn names_kubernetes_would_refuse_are_kept_under_a_derived_name() {
    let (fake, namespace) = shared_namespace();
    let store = open(fake, &namespace, ParseFailureMetrics::default()).await;
    store.create(&ns("Team_A"), &"/a=>/b".parse().unwrap(), &ChangeMeta::default()).await.unwrap();
    let listed = fake.kubectl().args(["get", "dtabs", "-n", &namespace, "-o", "name"]).output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(listed.trim().starts_with("dtab.l5d.io/team-a-x"), "{listed}");
    assert_eq!(store.list().await.unwrap(), vec![ns("Team_A")]);
    assert_eq!(store.get(&ns("Team_A")).await.unwrap().dtab.to_string(), "/a=>/b");
    assert_eq!(store.get(&ns("team-a")).await, Err(StoreError::NotFound(ns("team-a"))));
}

#[tokio::test]
async fn dentries_edited_into_nonsense_keep_the_last_good_dtab() {
    let (fake, namespace) = shared_namespace();
    let failures = ParseFailureMetrics::default();
    let store = open(fake, &namespace, failures.clone()).await;
    store.create(&ns("web"), &"/svc=>/good".parse().unwrap(), &ChangeMeta::default()).await.unwrap();
    let mut rx = store.watch(&ns("web"));
    watch_until(&mut rx, "the good dtab", |v| dtab_text(v).as_deref() == Some("/svc=>/good")).await;
    kubectl_apply(
        fake,
        &namespace,
        "apiVersion: l5d.io/v1alpha1\nkind: DTab\nmetadata: {name: web}\ndentries:\n- {prefix: svc, dst: '/x & & /y'}\n",
    );
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while failures.invalid() != 1 {
        assert!(tokio::time::Instant::now() < deadline, "the bad dentries were never counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(failures.failures(), 1);
    assert_eq!(dtab_text(rx.borrow().as_ref()).as_deref(), Some("/svc=>/good"), "the last good dtab stays");
    let got = store.get(&ns("web")).await;
    assert!(matches!(&got, Err(StoreError::Invalid(why)) if why.contains("dentry 0")), "{got:?}");
}

#[tokio::test]
async fn the_watch_resumes_lists_again_after_a_410_and_keeps_its_state_while_the_api_server_is_away() {
    let fake = FakeApiServer::start().unwrap();
    install_crd(&fake);
    let store = open(&fake, "default", ParseFailureMetrics::default()).await;
    let writer = open(&fake, "default", ParseFailureMetrics::default()).await;
    let mut rx = store.watch(&ns("web"));
    let mut version = writer.create(&ns("web"), &"/svc=>/1".parse().unwrap(), &ChangeMeta::default()).await.unwrap();
    watch_until(&mut rx, "the create", |v| dtab_text(v).as_deref() == Some("/svc=>/1")).await;

    // Closed watches resume.
    fake.close_watches();
    version = writer.update(&ns("web"), &"/svc=>/2".parse().unwrap(), &version, &ChangeMeta::default()).await.unwrap();
    watch_until(&mut rx, "the change after closed watches", |v| dtab_text(v).as_deref() == Some("/svc=>/2")).await;

    // A compacted history: the watch falls behind and must list again.
    fake.fail_next_matching(usize::MAX, 500, RequestFilter::watches().path_contains("dtabs"));
    fake.close_watches();
    health_until(&store, "unavailable", |h| !h.available).await;
    writer.update(&ns("web"), &"/svc=>/3".parse().unwrap(), &version, &ChangeMeta::default()).await.unwrap();
    writer.create(&ns("api"), &"/svc=>/api".parse().unwrap(), &ChangeMeta::default()).await.unwrap();
    fake.compact();
    fake.clear_faults();
    watch_until(&mut rx, "the change after a 410", |v| dtab_text(v).as_deref() == Some("/svc=>/3")).await;
    assert_eq!(*store.watch_list().borrow().clone(), vec![ns("api"), ns("web")]);
    health_until(&store, "available again", |h| h.available).await;

    // The API server away: calls fail at once as unavailable, the health says so, and
    // watches keep the last state.
    fake.stop();
    let failed = store.get(&ns("web")).await;
    assert!(matches!(failed, Err(StoreError::Unavailable(_))), "{failed:?}");
    let health = health_until(&store, "unavailable", |h| !h.available).await;
    assert!(health.last_error.is_some());
    assert_eq!(dtab_text(rx.borrow().as_ref()).as_deref(), Some("/svc=>/3"));
    // Changes made meanwhile (the fake's state outlives its listener) arrive after a restart.
    fake.put(
        json!({"apiVersion": "l5d.io/v1alpha1", "kind": "DTab", "metadata": {"name": "web", "namespace": "default"},
        "dentries": [{"prefix": "/svc", "dst": "/4"}]}),
    )
    .unwrap();
    fake.restart().unwrap();
    watch_until(&mut rx, "the change made while it was away", |v| dtab_text(v).as_deref() == Some("/svc=>/4")).await;
    health_until(&store, "available again", |h| h.available && h.synced).await;
}

#[tokio::test]
async fn a_missing_crd_is_named_in_the_health() {
    let fake = FakeApiServer::start().unwrap();
    let store = K8sStore::start(K8sStoreOptions {
        client: kube::Client::try_from(kube::Config::new(fake.url().parse().unwrap())).unwrap(),
        namespace: "default".into(),
        history_limit: 10,
        request_timeout: Duration::from_secs(2),
        parse_failures: ParseFailureMetrics::default(),
    });
    let health = health_until(&store, "unavailable", |h| !h.available).await;
    assert!(health.last_error.as_deref().is_some_and(|e| e.contains("CRD")), "{health:?}");
    let listed = store.list().await;
    assert!(matches!(&listed, Err(StoreError::Unavailable(why)) if why.contains("CRD")), "{listed:?}");
}
