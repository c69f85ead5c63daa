//! The etcd store against a real etcd (Debian's `etcd-server`, started per test on free
//! loopback ports): the conformance suite, then crashes, partitions and compaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, CompactionOptions, GetOptions};
use waymark_store::conformance::{
    Backend, HANG_GUARD, cas_stress, conformance_tests, dtab, eventually, meta, ns, until, until_dtab,
};
use waymark_store::{DtabStore, EtcdStore, EtcdStoreOptions, StoreConfig, StoreError, StoreHealth, Version};
use waymark_test_support::{EtcdServer, EtcdServerTls, TcpProxy, TestCa};

/// Store instances over one etcd server and key prefix.
struct EtcdBackend {
    server: EtcdServer,
    prefix: String,
}

impl EtcdBackend {
    fn start() -> Self {
        waymark_test_support::init_tracing();
        static PREFIXES: AtomicUsize = AtomicUsize::new(0);
        let server =
            EtcdServer::start().unwrap_or_else(|e| panic!("cannot start etcd for the etcd store tests: {e:#}"));
        // A prefix of its own, so that keys of other tests could never be mistaken for ours.
        let prefix = format!("/waymark-test/{}/dtabs/", PREFIXES.fetch_add(1, Ordering::Relaxed));
        EtcdBackend { server, prefix }
    }

    fn options(&self, endpoint: String, history_limit: usize) -> EtcdStoreOptions {
        EtcdStoreOptions {
            prefix: self.prefix.clone(),
            history_limit,
            request_timeout: Duration::from_secs(5),
            max_backoff: Duration::from_millis(200),
            keep_alive_interval: Duration::from_secs(1),
            ..EtcdStoreOptions::new([endpoint])
        }
    }

    async fn connect(&self, options: EtcdStoreOptions) -> EtcdStore {
        let store = EtcdStore::connect(options).await.unwrap();
        synced(&store).await;
        store
    }

    /// A plain etcd client, standing in for `etcdctl` and other writers.
    async fn raw(&self) -> Client {
        Client::connect([self.server.endpoint()], None).await.unwrap()
    }

    fn key(&self, ns: &str) -> String {
        format!("{}{ns}", self.prefix)
    }
}

#[async_trait]
impl Backend for EtcdBackend {
    async fn open(&self, history_limit: usize) -> Arc<dyn DtabStore> {
        Arc::new(self.connect(self.options(self.server.endpoint(), history_limit)).await)
    }
}

conformance_tests!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    EtcdBackend::start()
);

async fn synced(store: &dyn DtabStore) -> StoreHealth {
    until(&mut store.health(), "the store to sync", |h| h.synced && h.available).await
}

fn revision(version: &Version) -> i64 {
    version.as_text().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_are_canonical_text_with_history_beside_them() {
    let backend = EtcdBackend::start();
    let store = backend.open(10).await;
    let version = store.create(&ns("web"), &dtab("/svc => /#/io.l5d.fs ;"), &meta()).await.unwrap();
    let mut raw = backend.raw().await;

    let value = raw.get(backend.key("web"), None).await.unwrap();
    let kv = &value.kvs()[0];
    assert_eq!(kv.value(), b"/svc=>/#/io.l5d.fs");
    assert_eq!(revision(&version), kv.mod_revision());

    let history =
        raw.get(format!("{}/history/", backend.key("web")), Some(GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(history.kvs().len(), 1);
    let record = std::str::from_utf8(history.kvs()[0].value()).unwrap();
    assert!(record.contains(r#""dtab":"/svc=>/#/io.l5d.fs""#), "{record}");
    // Written in the same transaction as the value.
    assert_eq!(history.kvs()[0].create_revision(), kv.mod_revision());
    assert_eq!(store.list().await.unwrap(), vec![ns("web")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_written_directly_to_etcd_reach_watchers() {
    let backend = EtcdBackend::start();
    let store = backend.open(10).await;
    let mut raw = backend.raw().await;
    let put = raw.put(backend.key("web"), "/a => /direct", None).await.unwrap();
    let seen = until_dtab(store.as_ref(), "web", Some("/a=>/direct")).await.unwrap();
    assert_eq!(revision(&seen.version), put.header().unwrap().revision());
    assert_eq!(store.list().await.unwrap(), vec![ns("web")]);
    // No history record was written with it.
    assert_eq!(store.history(&ns("web")).await.unwrap(), vec![]);
    raw.delete(backend.key("web"), None).await.unwrap();
    until_dtab(store.as_ref(), "web", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_that_does_not_parse_keeps_the_last_good_dtab_and_is_counted() {
    let backend = EtcdBackend::start();
    let store = backend.connect(backend.options(backend.server.endpoint(), 10)).await;
    let good = store.create(&ns("web"), &dtab("/a=>/good"), &meta()).await.unwrap();
    let mut rx = store.watch(&ns("web"));
    let mut raw = backend.raw().await;
    raw.put(backend.key("web"), "/a => => broken", None).await.unwrap();
    eventually("the parse failure to be counted", || store.parse_failures().failures() == 1).await;
    assert_eq!(store.parse_failures().invalid(), 1);
    assert_eq!(rx.borrow_and_update().as_ref().map(|v| &v.version), Some(&good));
    match store.get(&ns("web")).await {
        Err(StoreError::Invalid(msg)) => assert!(msg.contains("does not parse"), "{msg}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    // A new instance starts with nothing in service for it, and counts it too.
    let fresh = backend.connect(backend.options(backend.server.endpoint(), 10)).await;
    assert_eq!(*fresh.watch(&ns("web")).borrow(), None);
    assert_eq!(fresh.parse_failures().invalid(), 1);

    store.put(&ns("web"), &dtab("/a=>/fixed"), &meta()).await.unwrap();
    until(&mut rx, "the fixed dtab", |v| v.as_ref().is_some_and(|v| v.dtab == dtab("/a=>/fixed"))).await;
    eventually("the invalid count to drop", || store.parse_failures().invalid() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_after_etcd_restarts_and_misses_no_change() {
    let mut backend = EtcdBackend::start();
    let watcher = backend.connect(backend.options(backend.server.endpoint(), 10)).await;
    let v1 = watcher.create(&ns("web"), &dtab("/a=>/0"), &meta()).await.unwrap();
    let mut rx = watcher.watch(&ns("web"));
    until(&mut rx, "the create", |v| v.is_some()).await;
    let mut list = watcher.watch_list();

    tokio::task::block_in_place(|| backend.server.kill()).unwrap();

    // While etcd is down calls fail as unavailable with the cause, and watches keep their
    // last value.
    match watcher.get(&ns("web")).await {
        Err(StoreError::Unavailable(cause)) => assert!(cause.contains(&backend.server.endpoint()), "{cause}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    let mut health = watcher.health();
    let down = until(&mut health, "the store to notice", |h| !h.available).await;
    assert!(down.last_error.is_some(), "{down:?}");
    assert_eq!(rx.borrow_and_update().as_ref().map(|v| &v.version), Some(&v1));

    tokio::task::block_in_place(|| backend.server.restart()).unwrap();

    // Changes made as soon as etcd is back, most likely before the watcher has reconnected.
    let writer = backend.connect(backend.options(backend.server.endpoint(), 10)).await;
    let mut last = v1;
    for i in 1..=5 {
        last = writer.update(&ns("web"), &dtab(&format!("/a=>/{i}")), &last, &meta()).await.unwrap();
    }
    writer.create(&ns("new"), &dtab("/n=>/n"), &meta()).await.unwrap();
    writer.create(&ns("brief"), &dtab("/b=>/b"), &meta()).await.unwrap();
    writer.delete(&ns("brief"), &meta()).await.unwrap();

    let seen = until(&mut rx, "the last update", |v| v.as_ref().is_some_and(|v| v.version == last)).await;
    assert_eq!(seen.unwrap().dtab, dtab("/a=>/5"));
    until(&mut list, "the new namespace", |l| **l == [ns("new"), ns("web")]).await;
    synced(&watcher).await;
    // Resumed from its revision: no second full read was needed.
    assert_eq!(watcher.relists(), 1);
    assert_eq!(watcher.get(&ns("web")).await.unwrap().version, last);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_store_fails_fast_keeps_its_watches_and_recovers() {
    let backend = EtcdBackend::start();
    let proxy = TcpProxy::start(backend.server.client_addr()).await.unwrap();
    let store = backend.connect(backend.options(proxy.url(), 10)).await;
    let v1 = store.create(&ns("web"), &dtab("/a=>/b"), &meta()).await.unwrap();
    let mut rx = store.watch(&ns("web"));
    until(&mut rx, "the create", |v| v.is_some()).await;

    proxy.block();
    let mut health = store.health();
    until(&mut health, "the store to notice", |h| !h.available).await;
    for result in [
        store.get(&ns("web")).await.map(drop),
        store.put(&ns("web"), &dtab("/a=>/c"), &meta()).await.map(drop),
        store.list().await.map(drop),
    ] {
        assert!(matches!(&result, Err(StoreError::Unavailable(cause)) if cause.contains("etcd")), "{result:?}");
    }
    assert_eq!(rx.borrow().as_ref().map(|v| &v.version), Some(&v1));

    proxy.unblock();
    synced(store_ref(&store)).await;
    let v2 = store.update(&ns("web"), &dtab("/a=>/c"), &v1, &meta()).await.unwrap();
    until(&mut rx, "the update", |v| v.as_ref().is_some_and(|v| v.version == v2)).await;
    assert_eq!(store.health().borrow().last_error, None);
}

fn store_ref(store: &EtcdStore) -> &dyn DtabStore {
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_whose_revision_was_compacted_reads_everything_again() {
    let backend = EtcdBackend::start();
    let proxy = TcpProxy::start(backend.server.client_addr()).await.unwrap();
    let store = backend.connect(backend.options(proxy.url(), 10)).await;
    store.create(&ns("web"), &dtab("/a=>/0"), &meta()).await.unwrap();
    store.create(&ns("old"), &dtab("/o=>/o"), &meta()).await.unwrap();
    until_dtab(&store, "old", Some("/o=>/o")).await;
    assert_eq!(store.relists(), 1);

    proxy.block();
    until(&mut store.health(), "the store to notice", |h| !h.available).await;
    // Behind the store's back: changes, then a compaction that removes the revisions the
    // watch would resume from.
    let writer = backend.connect(backend.options(backend.server.endpoint(), 10)).await;
    let current = writer.get(&ns("web")).await.unwrap().version;
    let last = writer.update(&ns("web"), &dtab("/a=>/1"), &current, &meta()).await.unwrap();
    writer.delete(&ns("old"), &meta()).await.unwrap();
    writer.create(&ns("new"), &dtab("/n=>/n"), &meta()).await.unwrap();
    let mut raw = backend.raw().await;
    let now = raw.get("/", Some(GetOptions::new().with_count_only())).await.unwrap().header().unwrap().revision();
    raw.compact(now, Some(CompactionOptions::new().with_physical())).await.unwrap();

    proxy.unblock();
    let seen = until_dtab(&store, "web", Some("/a=>/1")).await.unwrap();
    assert_eq!(seen.version, last);
    until_dtab(&store, "old", None).await;
    until_dtab(&store, "new", Some("/n=>/n")).await;
    assert_eq!(**store.watch_list().borrow(), [ns("new"), ns("web")]);
    assert_eq!(store.relists(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_started_while_etcd_is_down_syncs_when_it_comes_up() {
    let mut backend = EtcdBackend::start();
    backend.open(10).await.create(&ns("web"), &dtab("/a=>/b"), &meta()).await.unwrap();
    tokio::task::block_in_place(|| backend.server.kill()).unwrap();

    let store = EtcdStore::connect(backend.options(backend.server.endpoint(), 10)).await.unwrap();
    let health = store.health().borrow().clone();
    assert!(!health.synced, "{health:?}");
    assert!(matches!(store.list().await, Err(StoreError::Unavailable(_))));
    assert_eq!(*store.watch(&ns("web")).borrow(), None);

    tokio::task::block_in_place(|| backend.server.restart()).unwrap();
    tokio::time::timeout(HANG_GUARD, synced(&store)).await.unwrap();
    assert_eq!(store.watch(&ns("web")).borrow().as_ref().map(|v| v.dtab.clone()), Some(dtab("/a=>/b")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_is_not_a_url_is_invalid() {
    let result = EtcdStore::connect(EtcdStoreOptions::new(["not a url"])).await;
    assert!(matches!(&result, Err(StoreError::Invalid(msg)) if msg.contains("not a url")), "{result:?}");
    let result = EtcdStore::connect(EtcdStoreOptions::new(Vec::<String>::new())).await;
    assert!(matches!(result, Err(StoreError::Invalid(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_swap_through_two_instances_loses_no_update() {
    let backend = EtcdBackend::start();
    let first = backend.open(2000).await;
    let second = backend.open(2000).await;
    cas_stress(first, second, 8, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password_authenticate_and_a_wrong_password_says_why() {
    let backend = EtcdBackend::start();
    let mut raw = backend.raw().await;
    raw.user_add("root", "root-secret", None).await.unwrap();
    raw.user_grant_role("root", "root").await.unwrap();
    raw.auth_enable().await.unwrap();

    let with_password = |password: &str| EtcdStoreOptions {
        credentials: Some(("root".to_string(), password.to_string())),
        ..backend.options(backend.server.endpoint(), 10)
    };
    let store = backend.connect(with_password("root-secret")).await;
    store.create(&ns("web"), &dtab("/a=>/b"), &meta()).await.unwrap();
    until_dtab(&store, "web", Some("/a=>/b")).await;

    // Wrong credentials are a configuration error, reported at once rather than retried.
    match EtcdStore::connect(with_password("wrong")).await {
        Err(StoreError::Invalid(cause)) => assert!(cause.contains("authentication failed"), "{cause}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    let unauthenticated = EtcdStore::connect(backend.options(backend.server.endpoint(), 10)).await.unwrap();
    let health = until(&mut unauthenticated.health(), "the refusal", |h| h.last_error.is_some()).await;
    assert!(!health.synced, "{health:?}");
    let result = unauthenticated.get(&ns("web")).await;
    assert!(
        matches!(&result, Err(StoreError::Unavailable(cause)) if cause.contains("user name is empty")),
        "{result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_client_certificate_from_the_configuration() {
    waymark_test_support::init_tracing();
    let ca = TestCa::new("etcd test CA").unwrap();
    let tls = EtcdServerTls {
        server: ca.issue(&["127.0.0.1", "localhost"]).unwrap(),
        client_ca_pem: ca.cert_pem().to_string(),
        client_cert_auth: true,
    };
    let server = tokio::task::block_in_place(|| EtcdServer::start_tls(tls)).unwrap();
    let files = tempfile::tempdir().unwrap();
    let write = |name: &str, pem: &str| {
        let path = files.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path.display().to_string()
    };
    let client = ca.issue(&["waymark"]).unwrap();
    let (ca_path, cert_path, key_path) = (
        write("ca.pem", ca.cert_pem()),
        write("client.pem", &client.cert_pem),
        write("client-key.pem", &client.key_pem),
    );
    let config = |tls: &str| -> StoreConfig {
        let yaml =
            format!("kind: etcd\nendpoints: [{}]\nrequest_timeout_ms: 2000\ntls: {{ {tls} }}\n", server.endpoint());
        serde_saphyr::from_str(&yaml).unwrap()
    };

    let store = config(&format!("ca_cert_path: {ca_path}, cert_path: {cert_path}, key_path: {key_path}"))
        .build()
        .await
        .unwrap();
    synced(store.as_ref()).await;
    store.create(&ns("web"), &dtab("/a=>/tls"), &meta()).await.unwrap();
    until_dtab(store.as_ref(), "web", Some("/a=>/tls")).await;

    // etcd requires a client certificate.
    let anonymous = config(&format!("ca_cert_path: {ca_path}")).build().await.unwrap();
    until(&mut anonymous.health(), "the refusal", |h| h.last_error.is_some()).await;
    assert!(matches!(anonymous.get(&ns("web")).await, Err(StoreError::Unavailable(_))));

    // A CA that did not sign etcd's certificate is not trusted.
    let other_ca = TestCa::new("another CA").unwrap();
    let stranger = config(&format!(
        "ca_cert_path: {}, cert_path: {cert_path}, key_path: {key_path}",
        write("other.pem", other_ca.cert_pem())
    ))
    .build()
    .await
    .unwrap();
    let health = until(&mut stranger.health(), "the refusal", |h| h.last_error.is_some()).await;
    assert!(!health.synced, "{health:?}");
    match stranger.get(&ns("web")).await {
        Err(StoreError::Unavailable(cause)) => assert!(cause.to_lowercase().contains("certificate"), "{cause}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}
