//! The conformance suite every backend runs (feature `conformance`), and helpers for backend
//! tests: a backend implements [`Backend`] and generates one test per case with
//! [`conformance_tests!`](crate::conformance_tests):
//!
//! ```ignore
//! waymark_store::conformance_tests!(#[tokio::test] MyBackend::new());
//! ```
//!
//! Every backend passes exactly these cases: memory, file, etcd, and Kubernetes.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use crate::{ChangeMeta, DtabStore, HistoryPage, MAX_DTAB_BYTES, Namespace, StoreError, Version, VersionedDtab};
use async_trait::async_trait;
use tokio::sync::watch;
use tokio::task::JoinSet;
use waymark_dtab::Dtab;

/// Guards against a hang when an expected change never comes; tests never assert on time.
pub const HANG_GUARD: Duration = Duration::from_secs(60);

/// The history limit stores under conformance are opened with.
pub const CONFORMANCE_HISTORY_LIMIT: usize = 5;

/// A backend under test: opens store instances over one shared set of backing data (one
/// directory, one etcd prefix), as several namer processes would.
#[async_trait]
pub trait Backend: Send + Sync {
    /// A new instance with the given history limit, synced with the backing data.
    async fn open(&self, history_limit: usize) -> Arc<dyn DtabStore>;
}

/// Generates one test per conformance case, each with a fresh backend from `$backend`, in a
/// module named `conformance`.
#[macro_export]
macro_rules! conformance_tests {
    (#[$test:meta] $backend:expr) => {
        conformance_tests!(@cases #[$test] $backend;
            create_then_get_returns_the_dtab_and_its_version,
            create_fails_when_the_namespace_exists,
            get_of_a_missing_namespace_is_not_found,
            put_creates_and_replaces,
            update_with_the_current_version_replaces,
            update_with_a_stale_version_conflicts,
            update_with_a_foreign_version_conflicts,
            update_of_a_missing_namespace_is_not_found,
            concurrent_updates_from_one_version_let_exactly_one_win,
            delete_removes_and_a_second_delete_is_not_found,
            a_deleted_namespace_can_be_created_again,
            a_version_from_before_a_delete_and_re_create_is_stale,
            versions_never_repeat_in_history,
            delete_at_the_current_version_deletes,
            delete_at_a_stale_or_foreign_version_conflicts_and_keeps_the_dtab,
            delete_at_of_a_missing_namespace_is_not_found,
            list_is_sorted,
            dtabs_round_trip_in_canonical_form,
            an_empty_dtab_round_trips,
            an_invalid_dtab_is_rejected_and_never_stored,
            watch_starts_with_the_current_value_and_follows_every_change,
            watch_sees_writes_from_another_instance,
            watch_of_an_existing_namespace_on_a_new_instance_starts_with_its_value,
            watch_list_follows_the_set_of_namespaces,
            history_records_every_write_newest_first_with_author_and_message,
            history_is_shared_between_instances,
            history_keeps_only_the_newest_entries_up_to_the_limit,
            history_of_an_unknown_namespace_is_not_found,
            history_pages_read_the_history_in_order_within_their_size,
            rollback_restores_an_old_dtab_and_is_itself_recorded,
            rollback_to_an_unknown_version_is_invalid,
            health_is_available_and_synced
        );
    };
    (@cases #[$test:meta] $backend:expr; $($case:ident),* $(,)?) => {
        mod conformance {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[$test]
                async fn $case() {
                    let backend = $backend;
                    $crate::conformance::$case(&backend).await;
                }
            )*
        }
    };
}
pub use conformance_tests;

pub fn ns(name: &str) -> Namespace {
    name.parse().unwrap()
}

pub fn dtab(text: &str) -> Dtab {
    text.parse().unwrap()
}

pub fn meta() -> ChangeMeta {
    ChangeMeta::default()
}

/// Waits until the watched value satisfies `pred`, and returns it.
pub async fn until<T: Clone + Debug>(rx: &mut watch::Receiver<T>, what: &str, mut pred: impl FnMut(&T) -> bool) -> T {
    let outcome = tokio::time::timeout(HANG_GUARD, rx.wait_for(|v| pred(v))).await.map(|r| r.map(|v| v.clone()));
    match outcome {
        Ok(Ok(value)) => value,
        Ok(Err(_)) => panic!("the watch closed while waiting for {what}"),
        Err(_) => panic!("gave up waiting for {what}; the watch holds {:?}", *rx.borrow()),
    }
}

/// Waits until the namespace's watch holds `expected` (`None`: absent).
pub async fn until_dtab(store: &dyn DtabStore, name: &str, expected: Option<&str>) -> Option<VersionedDtab> {
    let mut rx = store.watch(&ns(name));
    let expected = expected.map(dtab);
    until(&mut rx, &format!("{name} to hold {expected:?}"), |v| v.as_ref().map(|v| &v.dtab) == expected.as_ref()).await
}

/// Polls `check` until it holds, for state that has no watch (such as metrics).
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !check() {
        assert!(start.elapsed() < HANG_GUARD, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn create_then_get_returns_the_dtab_and_its_version(b: &dyn Backend) {
    let store = b.open(CONFORMANCE_HISTORY_LIMIT).await;
    let version = store.create(&ns("web"), &dtab("/svc=>/#/io.l5d.fs"), &meta()).await.unwrap();
    let got = store.get(&ns("web")).await.unwrap();
    assert_eq!(got.version, version);
    assert_eq!(got.dtab, dtab("/svc=>/#/io.l5d.fs"));
    assert_eq!(store.list().await.unwrap(), vec![ns("web")]);
}

pub async fn create_fails_when_the_namespace_exists(b: &dyn Backend) {
    let store = b.open(CONFORMANCE_HISTORY_LIMIT).await;
    let version = store.create(&ns("web"), &dtab("/a=>/b"), &meta()).await.unwrap();
    assert_eq!(store.create(&ns("web"), &dtab("/a=>/c"), &meta()).await, Err(StoreError::Exists));
    let got = store.get(&ns("web")).await.unwrap();
    assert_eq!((got.version, got.dtab), (version, dtab("/a=>/b")));
}

pub async fn get_of_a_missing_namespace_is_not_found(b: &dyn Backend) {
    let store = b.open(CONFORMANCE_HISTORY_LIMIT).await;
    assert_eq!(store.get(&ns("nowhere")).await, Err(StoreError::NotFound(ns("nowhere"))));
    assert!(store.list().await.unwrap().is_empty());
}

pub async fn put_creates_and_replaces(b: &dyn Backend) {
    let store = b.open(CONFORMANCE_HISTORY_LIMIT).await;
    let v1 = store.put(&ns("web"), &dtab("/a=>/b"), &meta()).await.unwrap();
    assert_eq!(store.get(&ns("web")).await.unwrap().version, v1);
    let v2 = store.put(&ns("web"), &dtab("/a=>/c"), &meta()).await.unwrap();
    assert_ne!(v1, v2);
    let got = store.get(&ns("web")).await.unwrap();
    assert_eq!((got.version, got.dtab), (v2, dtab("/a=>/c")));
}

pub async fn update_with_the_current_version_replaces(b: &dyn Backend) {
    let store = b.open(CONFORMANCE_HISTORY_LIMIT).await;
    let v1 = store.create(&ns("web"), &dtab("/a=>/b"), &meta()).await.unwrap();
    let v2 = store.update(&ns("web"), &dtab("/a=>/c"), &v1, &meta()).await.unwrap();
    assert_ne!(v1, v2);
    let got = store.get(&ns("web")).await.unwrap();
    assert_eq!((got.version, got.dtab), (v2.clone(), dtab("/a=>/c")));
    let v3 = store.update(&ns("web"), &dtab("/a=>/d"), &v2, &meta()).await.unwrap();
    assert_eq!(store.get(&ns("web")).await.unwrap().version, v3);
}

pub async fn update_with_a_stale_version_conflicts(b: &dyn Backend) {
    let store = b.open(CONFORMANCE_HISTORY_LIMIT).await;
    let v1 = store.create(&ns("web"), &dtab("/a=>/b"), &meta()).await.unwrap();
    let v2 = store.update(&ns("web"), &dtab("/a=>/c"), &v1, &meta()).await.unwrap();
    assert_eq!(store.update(&ns("web"), &dtab("/a=>/d"), &v1, &meta()).await, Err(StoreError::Conflict));
    let got = store.get(&ns("web")).await.unwrap();
    assert_eq!((got.version, got.dtab), (v2, dtab("/a=>/c")));
}

pub async fn update_with_a_foreign_version_conflicts(b: &dyn Backend) {
    let store = b.open(CONFORMANCE_HISTORY_LIMIT).await;
    store.create(&ns("web"), &dtab("/a=>/b"), &meta()).await.unwrap();
    for foreign in [Version::from_bytes("not a version"), Version::from_bytes(""), Version::from_bytes([0xff; 3])] {
        assert_eq!(store.update(&ns("web"), &dtab("/a=>/d"), &foreign, &meta()).await, Err(StoreError::Conflict));
    }
    assert_eq!(store.get(&ns("web")).await.unwrap().dtab, dtab("/a=>/b"));
}

pub async fn update_of_a_missing_namespace_is_not_found(b: &dyn Backend) {
    let store = b.open(CONFORMANCE_HISTORY_LIMIT).await;
    let other = store.create(&ns("other"), &dtab("/a=>/b"), &meta()).await.unwrap();
    assert_eq!(store.update(&ns("web"), &dtab("/a=>/b"), &other, &meta()).await, Err(StoreError::NotFound(ns("web"))));
    assert_eq!(
        store.update(&ns("web"), &dtab("/a=>/b"), &Version::from_bytes("0"), &meta()).await,
        Err(StoreError::NotFound(ns("web")))
    );
    assert_eq!(store.get(&ns("web")).await, Err(StoreError::NotFound(ns("web"))));
}

pub async fn concurrent_updates_from_one_version_let_exactly_one_win(b: &dyn Backend) {
    let first = b.open(CONFORMANCE_HISTORY_LIMIT).await;
    let second = b.open(CONFORMANCE_HISTORY_LIMIT).await;
    let (web, one, two, meta) = (ns("web"), dtab("/a=>/one"), dtab("/a=>/two"), meta());
    let v1 = first.create(&web, &dtab("/a=>/b"), &meta).await.unwrap();
    let (one, two) = tokio::join!(first.update(&web, &one, &v1, &meta), second.update(&web, &two, &v1, &meta));
    let (winner, loser) = match (one, two) {
        (Ok(v), Err(e)) => ((v, dtab("/a=>/one")), e),
        (Err(e), Ok(v)) => ((v, dtab("/a=>/two")), e),
        other => panic!("exactly one update must win, got {other:?}"),
    };
    assert_eq!(loser, StoreError::Conflict);
    let got = first.get(&ns("web")).await.unwrap();
    assert_eq!((got.version, got.dtab), winner);
}

pub async fn delete_removes_and_a_second_delete_is_not_found(b: &dyn Backend) {
    let store = b.open(CONFORMANCE_HISTORY_LIMIT).await;
    store.create(&ns("web"), &dtab("/a=>/b"), &meta()).await.unwrap();
    store.create(&ns("api"), &dtab("/a=>/b"), &meta()).await.unwrap();
    store.delete(&ns("web"), &meta()).await.unwrap();
    assert_eq!(store.get(&ns("web")).await, Err(StoreError::NotFound(ns("web"))));
    assert_eq!(store.list().await.unwrap(), vec![ns("api")]);
    assert_eq!(store.delete(&ns("web"), &meta()).await, Err(StoreError::NotFound(ns("web"))));
    assert_eq!(store.delete(&ns("never"), &meta()).await, Err(StoreError::NotFound(ns("never"))));
}

pub async fn a_deleted_namespace_can_be_created_again(b: &dyn Backend) {
    let store = b.open(CONFORMANCE_HISTORY_LIMIT).await;
    store.create(&ns("web"), &dtab("/a=>/b"), &meta()).await.unwrap();
    store.delete(&ns("web"), &meta()).await.unwrap();
    let version = store.create(&ns("web"), &dtab("/a=>/c"), &meta()).await.unwrap();
    let got = store.get(&ns("web")).await.unwrap();
    assert_eq!((got.version, got.dtab), (version, dtab("/a=>/c")));
}

pub async fn a_version_from_before_a_delete_and_re_create_is_stale(b: &dyn Backend) {
    let store = b.open(CONFORMANCE_HISTORY_LIMIT).await;
    let old = store.create(&ns("web"), &dtab("/a=>/old"), &meta()).await.unwrap();
    store.delete(&ns("web"), &meta()).await.unwrap();
    let new = store.create(&ns("web"), &dtab("/a=>/new"), &meta()).await.unwrap();
    assert_ne!(old, new);
    let stale = store.update(&ns("web"), &dtab("/a=>/stale"), &old, &meta()).await;
    assert_eq!(stale, Err(StoreError::Conflict));
    assert_eq!(store.delete_at(&ns("web"), &old, &meta()).await, Err(StoreError::Conflict));
    assert_eq!(store.get(&ns("web")).await.unwrap().dtab, dtab("/a=>/new"));
}

pub async fn versions_never_repeat_in_history(b: &dyn Backend) {
    let store = b.open(20).await;
    let web = store.create(&ns("web"), &dtab("/a=>/1"), &meta()).await.unwrap();
    store.create(&ns("api"), &dtab("/a=>/1"), &meta()).await.unwrap();
    store.update(&ns("web"), &dtab("/a=>/2"), &web, &meta()).await.unwrap();
    store.delete(&ns("web"), &meta()).await.unwrap();
    store.create(&ns("web"), &dtab("/a=>/3"), &meta()).await.unwrap();
    let history = store.history(&ns("web")).await.unwrap();
    assert_eq!(history.len(), 4, "{history:?}");
    let distinct: std::collections::HashSet<&Version> = history.iter().map(|e| &e.version).collect();
    assert_eq!(distinct.len(), history.len(), "{history:?}");
}

pub async fn delete_at_the_current_version_deletes(b: &dyn Backend) {
    let store = b.open(CONFORMANCE_HISTORY_LIMIT).await;
    let version = store.create(&ns("web"), &dtab("/a=>/b"), &meta()).await.unwrap();
    store.delete_at(&ns("web"), &version, &ChangeMeta::by("alice")).await.unwrap();
    assert_eq!(store.get(&ns("web")).await, Err(StoreError::NotFound(ns("web"))));
    let history = store.history(&ns("web")).await.unwrap();
    assert_eq!((history[0].dtab.as_ref(), history[0].author.as_deref()), (None, Some("alice")));
}

pub async fn delete_at_a_stale_or_foreign_version_conflicts_and_keeps_the_dtab(b: &dyn Backend) {
    let store = b.open(CONFORMANCE_HISTORY_LIMIT).await;
    let first = store.create(&ns("web"), &dtab("/a=>/b"), &meta()).await.unwrap();
    store.update(&ns("web"), &dtab("/a=>/c"), &first, &meta()).await.unwrap();
    assert_eq!(store.delete_at(&ns("web"), &first, &meta()).await, Err(StoreError::Conflict));
    let foreign = Version::from_bytes("no such version");
    assert_eq!(store.delete_at(&ns("web"), &foreign, &meta()).await, Err(StoreError::Conflict));
    assert_eq!(store.delete_at(&ns("web"), &Version::from_bytes(""), &meta()).await, Err(StoreError::Conflict));
    assert_eq!(store.get(&ns("web")).await.unwrap().dtab, dtab("/a=>/c"));
}

pub async fn delete_at_of_a_missing_namespace_is_not_found(b: &dyn Backend) {
    let store = b.open(CONFORMANCE_HISTORY_LIMIT).await;
    let version = store.create(&ns("web"), &dtab("/a=>/b"), &meta()).await.unwrap();
    store.delete(&ns("web"), &meta()).await.unwrap();
    assert_eq!(store.delete_at(&ns("web"), &version, &meta()).await, Err(StoreError::NotFound(ns("web"))));
    assert_eq!(store.delete_at(&ns("never"), &version, &meta()).await, Err(StoreError::NotFound(ns("never"))));
}

pub async fn list_is_sorted(b: &dyn Backend) {
    let store = b.open(CONFORMANCE_HISTORY_LIMIT).await;
    for name in ["c", "a-b", "B", "a", "a.b", "a_b"] {
        store.create(&ns(name), &dtab("/a=>/b"), &meta()).await.unwrap();
    }
    let mut expected: Vec<Namespace> = ["c", "a-b", "B", "a", "a.b", "a_b"].iter().map(|n| ns(n)).collect();
    expected.sort();
    assert_eq!(store.list().await.unwrap(), expected);
}

pub async fn dtabs_round_trip_in_canonical_form(b: &dyn Backend) {
    let store = b.open(CONFORMANCE_HISTORY_LIMIT).await;
    let written =
        dtab("/svc => /#/io.l5d.k8s/prod/http ;\n# canary\n/svc/web => 0.9 * /s/web-v1 & 0.1 * /s/web-v2 | /s/old;");
    store.create(&ns("web"), &written, &meta()).await.unwrap();
    let got = store.get(&ns("web")).await.unwrap();
    assert_eq!(got.dtab, written);
    assert_eq!(
        got.dtab.to_string(),
        "/svc=>/#/io.l5d.k8s/prod/http;/svc/web=>0.90*/s/web-v1 & 0.10*/s/web-v2 | /s/old"
    );
}

pub async fn an_empty_dtab_round_trips(b: &dyn Backend) {
    let store = b.open(CONFORMANCE_HISTORY_LIMIT).await;
    let version = store.create(&ns("empty"), &Dtab::empty(), &meta()).await.unwrap();
    let got = store.get(&ns("empty")).await.unwrap();
    assert_eq!((got.version, got.dtab), (version, Dtab::empty()));
    assert_eq!(store.list().await.unwrap(), vec![ns("empty")]);
}

pub async fn an_invalid_dtab_is_rejected_and_never_stored(b: &dyn Backend) {
    let store = b.open(CONFORMANCE_HISTORY_LIMIT).await;
    let dentry = format!("/{0}=>/{0}", "a".repeat(1000));
    let oversized = dtab(&vec![dentry; MAX_DTAB_BYTES / 2000 + 1].join(";"));
    for result in
        [store.create(&ns("big"), &oversized, &meta()).await, store.put(&ns("big"), &oversized, &meta()).await]
    {
        assert!(matches!(&result, Err(StoreError::Invalid(msg)) if msg.contains("limit")), "{result:?}");
    }
    assert_eq!(store.get(&ns("big")).await, Err(StoreError::NotFound(ns("big"))));
    assert_eq!(store.history(&ns("big")).await, Err(StoreError::NotFound(ns("big"))));

    let v1 = store.create(&ns("web"), &dtab("/a=>/b"), &meta()).await.unwrap();
    assert!(matches!(store.update(&ns("web"), &oversized, &v1, &meta()).await, Err(StoreError::Invalid(_))));
    let got = store.get(&ns("web")).await.unwrap();
    assert_eq!((got.version, got.dtab), (v1, dtab("/a=>/b")));
    assert_eq!(store.history(&ns("web")).await.unwrap().len(), 1);
}

pub async fn watch_starts_with_the_current_value_and_follows_every_change(b: &dyn Backend) {
    let store = b.open(CONFORMANCE_HISTORY_LIMIT).await;
    let mut rx = store.watch(&ns("web"));
    assert_eq!(*rx.borrow_and_update(), None);

    let v1 = store.create(&ns("web"), &dtab("/a=>/b"), &meta()).await.unwrap();
    let seen = until(&mut rx, "the create", |v| v.is_some()).await.unwrap();
    assert_eq!((seen.version, seen.dtab), (v1.clone(), dtab("/a=>/b")));

    let v2 = store.update(&ns("web"), &dtab("/a=>/c"), &v1, &meta()).await.unwrap();
    let seen = until(&mut rx, "the update", |v| v.as_ref().is_some_and(|v| v.version != v1)).await.unwrap();
    assert_eq!((seen.version, seen.dtab), (v2.clone(), dtab("/a=>/c")));

    let v3 = store.put(&ns("web"), &dtab("/a=>/d"), &meta()).await.unwrap();
    let seen = until(&mut rx, "the put", |v| v.as_ref().is_some_and(|v| v.version != v2)).await.unwrap();
    assert_eq!((seen.version, seen.dtab), (v3, dtab("/a=>/d")));

    store.delete(&ns("web"), &meta()).await.unwrap();
    until(&mut rx, "the delete", |v| v.is_none()).await;
}

pub async fn watch_sees_writes_from_another_instance(b: &dyn Backend) {
    let watcher = b.open(CONFORMANCE_HISTORY_LIMIT).await;
    let writer = b.open(CONFORMANCE_HISTORY_LIMIT).await;
    let mut rx = watcher.watch(&ns("web"));

    let v1 = writer.create(&ns("web"), &dtab("/a=>/b"), &meta()).await.unwrap();
    let seen = until(&mut rx, "the other instance's create", |v| v.is_some()).await.unwrap();
    assert_eq!((seen.version, seen.dtab), (v1.clone(), dtab("/a=>/b")));

    let v2 = writer.update(&ns("web"), &dtab("/a=>/c"), &v1, &meta()).await.unwrap();
    let seen = until(&mut rx, "the other instance's update", |v| v.as_ref().is_some_and(|v| v.version != v1)).await;
    assert_eq!(seen.map(|v| (v.version, v.dtab)), Some((v2.clone(), dtab("/a=>/c"))));

    // The watcher can write on the version it was shown.
    watcher.update(&ns("web"), &dtab("/a=>/d"), &v2, &meta()).await.unwrap();
    until_dtab(writer.as_ref(), "web", Some("/a=>/d")).await;

    writer.delete(&ns("web"), &meta()).await.unwrap();
    until(&mut rx, "the other instance's delete", |v| v.is_none()).await;
}

pub async fn watch_of_an_existing_namespace_on_a_new_instance_starts_with_its_value(b: &dyn Backend) {
    let writer = b.open(CONFORMANCE_HISTORY_LIMIT).await;
    let version = writer.create(&ns("web"), &dtab("/a=>/b"), &meta()).await.unwrap();
    let reader = b.open(CONFORMANCE_HISTORY_LIMIT).await;
    let current = reader.watch(&ns("web")).borrow().clone();
    assert_eq!(current.map(|v| (v.version, v.dtab)), Some((version, dtab("/a=>/b"))));
    assert_eq!(**reader.watch_list().borrow(), vec![ns("web")]);
}

pub async fn watch_list_follows_the_set_of_namespaces(b: &dyn Backend) {
    let store = b.open(CONFORMANCE_HISTORY_LIMIT).await;
    let other = b.open(CONFORMANCE_HISTORY_LIMIT).await;
    let mut rx = store.watch_list();
    assert!(rx.borrow_and_update().is_empty());
    store.create(&ns("b"), &dtab("/a=>/b"), &meta()).await.unwrap();
    other.create(&ns("a"), &dtab("/a=>/b"), &meta()).await.unwrap();
    until(&mut rx, "a and b", |list| **list == [ns("a"), ns("b")]).await;
    other.delete(&ns("b"), &meta()).await.unwrap();
    until(&mut rx, "only a", |list| **list == [ns("a")]).await;
    // A value change alone leaves the set as it is.
    let version = store.get(&ns("a")).await.unwrap().version;
    store.update(&ns("a"), &dtab("/a=>/c"), &version, &meta()).await.unwrap();
    until_dtab(store.as_ref(), "a", Some("/a=>/c")).await;
    assert_eq!(**rx.borrow(), [ns("a")]);
}

pub async fn history_records_every_write_newest_first_with_author_and_message(b: &dyn Backend) {
    let store = b.open(CONFORMANCE_HISTORY_LIMIT).await;
    let v1 = store.create(&ns("web"), &dtab("/a=>/1"), &ChangeMeta::by("alice").with_message("first")).await.unwrap();
    let v2 = store.put(&ns("web"), &dtab("/a=>/2"), &ChangeMeta::by("bob")).await.unwrap();
    let v3 =
        store.update(&ns("web"), &dtab("/a=>/3"), &v2, &ChangeMeta::default().with_message("third")).await.unwrap();
    store.delete(&ns("web"), &ChangeMeta::by("carol").with_message("gone")).await.unwrap();

    let history = store.history(&ns("web")).await.unwrap();
    let summary: Vec<_> = history
        .iter()
        .map(|e| (e.dtab.as_ref().map(Dtab::to_string), e.author.as_deref(), e.message.as_deref()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (None, Some("carol"), Some("gone")),
            (Some("/a=>/3".to_string()), None, Some("third")),
            (Some("/a=>/2".to_string()), Some("bob"), None),
            (Some("/a=>/1".to_string()), Some("alice"), Some("first")),
        ]
    );
    assert_eq!(history[1].version, v3);
    assert_eq!(history[2].version, v2);
    assert_eq!(history[3].version, v1);
    assert!(history.windows(2).all(|w| w[0].at >= w[1].at), "newest first: {history:?}");
}

pub async fn history_is_shared_between_instances(b: &dyn Backend) {
    let first = b.open(CONFORMANCE_HISTORY_LIMIT).await;
    let second = b.open(CONFORMANCE_HISTORY_LIMIT).await;
    let v1 = first.create(&ns("web"), &dtab("/a=>/1"), &ChangeMeta::by("alice")).await.unwrap();
    let v2 = second.update(&ns("web"), &dtab("/a=>/2"), &v1, &ChangeMeta::by("bob")).await.unwrap();
    for store in [&first, &second] {
        let history = store.history(&ns("web")).await.unwrap();
        let versions: Vec<&Version> = history.iter().map(|e| &e.version).collect();
        assert_eq!(versions, vec![&v2, &v1]);
        assert_eq!(history[0].author.as_deref(), Some("bob"));
    }
}

pub async fn history_keeps_only_the_newest_entries_up_to_the_limit(b: &dyn Backend) {
    let store = b.open(CONFORMANCE_HISTORY_LIMIT).await;
    let writes = CONFORMANCE_HISTORY_LIMIT * 3 + 1;
    let mut versions = Vec::new();
    for i in 0..writes {
        versions.push(store.put(&ns("web"), &dtab(&format!("/a=>/{i}")), &meta()).await.unwrap());
    }
    let history = store.history(&ns("web")).await.unwrap();
    let expected: Vec<Dtab> =
        (writes - CONFORMANCE_HISTORY_LIMIT..writes).rev().map(|i| dtab(&format!("/a=>/{i}"))).collect();
    assert_eq!(history.iter().map(|e| e.dtab.clone().unwrap()).collect::<Vec<_>>(), expected);
    let newest: Vec<&Version> = versions.iter().rev().take(CONFORMANCE_HISTORY_LIMIT).collect();
    assert_eq!(history.iter().map(|e| &e.version).collect::<Vec<_>>(), newest);
}

pub async fn history_of_an_unknown_namespace_is_not_found(b: &dyn Backend) {
    let store = b.open(CONFORMANCE_HISTORY_LIMIT).await;
    assert_eq!(store.history(&ns("never")).await, Err(StoreError::NotFound(ns("never"))));
}

pub async fn history_pages_read_the_history_in_order_within_their_size(b: &dyn Backend) {
    let store = b.open(CONFORMANCE_HISTORY_LIMIT).await;
    let ns_ = ns("web");
    for i in 0..7 {
        store.put(&ns_, &dtab(&format!("/a=>/{}", "b".repeat(i + 1))), &meta()).await.unwrap();
    }
    let whole = store.history(&ns_).await.unwrap();
    assert_eq!(whole.len(), CONFORMANCE_HISTORY_LIMIT);
    let mut paged = Vec::new();
    let mut offset = 0;
    loop {
        let page = HistoryPage { offset, limit: 2, max_bytes: usize::MAX };
        let slice = store.history_page(&ns_, &page).await.unwrap();
        assert!(slice.entries.len() <= 2);
        offset += slice.entries.len();
        paged.extend(slice.entries);
        if !slice.more {
            break;
        }
    }
    assert_eq!(paged, whole);
    // A byte budget cuts a page short, but never below one entry.
    let tight = store.history_page(&ns_, &HistoryPage { offset: 0, limit: 10, max_bytes: 1 }).await.unwrap();
    assert_eq!((tight.entries.len(), tight.more), (1, true));
    assert_eq!(tight.entries[0], whole[0]);
    let past = store.history_page(&ns_, &HistoryPage { offset: 50, limit: 10, max_bytes: usize::MAX }).await.unwrap();
    assert_eq!((past.entries.len(), past.more), (0, false));
    let missing = store.history_page(&ns("never"), &HistoryPage { offset: 0, limit: 10, max_bytes: 1 }).await;
    assert_eq!(missing, Err(StoreError::NotFound(ns("never"))));
}

pub async fn rollback_restores_an_old_dtab_and_is_itself_recorded(b: &dyn Backend) {
    let store = b.open(CONFORMANCE_HISTORY_LIMIT).await;
    let v1 = store.create(&ns("web"), &dtab("/a=>/good"), &meta()).await.unwrap();
    let v2 = store.update(&ns("web"), &dtab("/a=>/bad"), &v1, &meta()).await.unwrap();
    let mut rx = store.watch(&ns("web"));

    let v3 = store.rollback(&ns("web"), &v1, &ChangeMeta::by("oncall").with_message("roll back")).await.unwrap();
    assert_ne!(v3, v2);
    let got = store.get(&ns("web")).await.unwrap();
    assert_eq!((got.version, got.dtab), (v3.clone(), dtab("/a=>/good")));
    until(&mut rx, "the rollback", |v| v.as_ref().is_some_and(|v| v.version == v3)).await;

    let history = store.history(&ns("web")).await.unwrap();
    assert_eq!(history.len(), 3);
    assert_eq!(history[0].version, v3);
    assert_eq!(history[0].dtab, Some(dtab("/a=>/good")));
    assert_eq!(history[0].author.as_deref(), Some("oncall"));
    assert_eq!(history[0].message.as_deref(), Some("roll back"));
    // A rollback is an update on the current version: a stale one conflicts.
    assert_eq!(store.update(&ns("web"), &dtab("/a=>/x"), &v2, &meta()).await, Err(StoreError::Conflict));
}

pub async fn rollback_to_an_unknown_version_is_invalid(b: &dyn Backend) {
    let store = b.open(CONFORMANCE_HISTORY_LIMIT).await;
    store.create(&ns("web"), &dtab("/a=>/b"), &meta()).await.unwrap();
    let result = store.rollback(&ns("web"), &Version::from_bytes("no such version"), &meta()).await;
    assert!(matches!(result, Err(StoreError::Invalid(_))), "{result:?}");
    assert_eq!(
        store.rollback(&ns("never"), &Version::from_bytes("1"), &meta()).await,
        Err(StoreError::NotFound(ns("never")))
    );
}

pub async fn health_is_available_and_synced(b: &dyn Backend) {
    let store = b.open(CONFORMANCE_HISTORY_LIMIT).await;
    store.list().await.unwrap();
    let health = store.health().borrow().clone();
    assert!(health.available && health.synced, "{health:?}");
    assert_eq!(health.last_error, None);
}

/// One successful compare-and-swap in [`cas_stress`].
#[derive(Debug)]
struct Success {
    expected: Version,
    dtab: Dtab,
}

/// `writers` tasks each make `updates` successful compare-and-swap updates to one namespace,
/// alternating between two store instances over the same backing data, retrying on conflict.
/// Then history must hold exactly the successful writes, each one built on the version
/// before it: no update lost, none applied twice, none out of order.
pub async fn cas_stress(first: Arc<dyn DtabStore>, second: Arc<dyn DtabStore>, writers: usize, updates: usize) {
    let target = ns("contended");
    let initial = first.create(&target, &dtab("/w=>/initial"), &meta()).await.unwrap();
    let mut tasks = JoinSet::new();
    for writer in 0..writers {
        let store = if writer % 2 == 0 { Arc::clone(&first) } else { Arc::clone(&second) };
        let target = target.clone();
        tasks.spawn(async move {
            let mut successes = Vec::new();
            let mut conflicts = 0_usize;
            while successes.len() < updates {
                let current = store.get(&target).await.unwrap();
                let next = dtab(&format!("/w{writer}=>/seq/{}", successes.len()));
                let meta = ChangeMeta::by(format!("writer-{writer}"));
                match store.update(&target, &next, &current.version, &meta).await {
                    Ok(version) => successes.push((version, Success { expected: current.version, dtab: next })),
                    Err(StoreError::Conflict) => conflicts += 1,
                    Err(e) => panic!("writer {writer}: unexpected error {e}"),
                }
            }
            (successes, conflicts)
        });
    }
    let mut successes: HashMap<Version, Success> = HashMap::new();
    let mut conflicts = 0;
    while let Some(result) = tasks.join_next().await {
        let (done, lost_races) = result.unwrap();
        conflicts += lost_races;
        for (version, success) in done {
            assert!(successes.insert(version.clone(), success).is_none(), "version {version:?} returned twice");
        }
    }
    assert_eq!(successes.len(), writers * updates);

    let mut history = first.history(&target).await.unwrap();
    history.reverse();
    assert_eq!(history.len(), writers * updates + 1, "history must hold the create and every successful update");
    assert_eq!(history[0].version, initial);
    assert_eq!(history[0].dtab, Some(dtab("/w=>/initial")));
    let mut last_seq: HashMap<String, usize> = HashMap::new();
    for pair in history.windows(2) {
        let (before, entry) = (&pair[0], &pair[1]);
        let success = successes
            .remove(&entry.version)
            .unwrap_or_else(|| panic!("history entry {:?} is not a successful write", entry.version));
        assert_eq!(entry.dtab.as_ref(), Some(&success.dtab));
        assert_eq!(success.expected, before.version, "each update must build on the entry before it");
        let author = entry.author.clone().unwrap();
        let seq: usize = success.dtab.to_string().rsplit('/').next().unwrap().parse().unwrap();
        if let Some(previous) = last_seq.insert(author.clone(), seq) {
            assert_eq!(seq, previous + 1, "{author}'s updates out of order");
        }
    }
    assert!(successes.is_empty(), "successful writes missing from history: {}", successes.len());
    let last = history.last().unwrap();
    let current = second.get(&target).await.unwrap();
    assert_eq!((&current.version, Some(&current.dtab)), (&last.version, last.dtab.as_ref()));
    tracing::info!(conflicts, "compare-and-swap stress done");
}
