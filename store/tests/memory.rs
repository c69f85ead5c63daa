//! The memory store against the conformance suite, on a paused clock.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use waymark_store::conformance::{Backend, cas_stress, conformance_tests, dtab, meta, ns};
use waymark_store::{ChangeMeta, DtabStore, MemoryStore, StoreConfig, StoreError, Version};

/// One memory store: every "instance" is the same store, as it has no shared backing data.
#[derive(Default)]
struct MemoryBackend(OnceLock<Arc<MemoryStore>>);

#[async_trait]
impl Backend for MemoryBackend {
    async fn open(&self, history_limit: usize) -> Arc<dyn DtabStore> {
        self.0.get_or_init(|| Arc::new(MemoryStore::with_history_limit(history_limit))).clone()
    }
}

conformance_tests!(
    #[tokio::test(start_paused = true)]
    MemoryBackend::default()
);

#[tokio::test(start_paused = true)]
async fn versions_count_every_write_in_the_store_and_never_start_again() {
    let store = MemoryStore::new();
    let counter = |n: u64| Version::from_bytes(n.to_be_bytes());
    assert_eq!(store.create(&ns("web"), &dtab("/a=>/b"), &meta()).await.unwrap(), counter(1));
    assert_eq!(store.put(&ns("web"), &dtab("/a=>/c"), &meta()).await.unwrap(), counter(2));
    assert_eq!(store.update(&ns("web"), &dtab("/a=>/d"), &counter(2), &meta()).await.unwrap(), counter(3));
    assert_eq!(store.create(&ns("api"), &dtab("/a=>/b"), &meta()).await.unwrap(), counter(4));
    store.delete(&ns("web"), &meta()).await.unwrap();
    assert_eq!(store.history(&ns("web")).await.unwrap()[0].version, counter(5));
    assert_eq!(store.create(&ns("web"), &dtab("/a=>/b"), &meta()).await.unwrap(), counter(6));
}

#[tokio::test(start_paused = true)]
async fn namespaces_from_configuration_are_preloaded_with_history() {
    let config: StoreConfig =
        serde_saphyr::from_str("kind: io.l5d.inMemory\nnamespaces:\n  default: /svc => /#/io.l5d.fs\n").unwrap();
    let store = config.build().await.unwrap();
    assert_eq!(store.list().await.unwrap(), vec![ns("default")]);
    assert_eq!(store.get(&ns("default")).await.unwrap().dtab, dtab("/svc=>/#/io.l5d.fs"));
    let history = store.history(&ns("default")).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].message.as_deref(), Some("loaded from configuration"));
    assert_eq!(**store.watch_list().borrow(), vec![ns("default")]);
}

#[tokio::test(start_paused = true)]
async fn compare_and_swap_loses_no_update_under_contention() {
    let store: Arc<dyn DtabStore> = Arc::new(MemoryStore::with_history_limit(2000));
    cas_stress(Arc::clone(&store), store, 8, 200).await;
}

#[tokio::test(start_paused = true)]
async fn change_meta_defaults_to_no_author_or_message() {
    assert_eq!(ChangeMeta::default(), ChangeMeta { author: None, message: None });
}

#[tokio::test(start_paused = true)]
async fn limits_refuse_more_namespaces_or_bytes_than_configured() {
    let config: StoreConfig = serde_saphyr::from_str(
        "kind: memory\nlimits:\n  max_namespaces: 2\n  max_stored_bytes: 40\nnamespaces:\n  a: /a=>/b\n",
    )
    .unwrap();
    let store = config.build().await.unwrap();
    store.create(&ns("b"), &dtab("/a=>/b"), &meta()).await.unwrap();
    let third = store.create(&ns("c"), &dtab("/a=>/b"), &meta()).await;
    assert!(matches!(third, Err(StoreError::LimitReached(ref why)) if why.contains("max_namespaces")), "{third:?}");
    assert!(matches!(store.put(&ns("c"), &dtab("/a=>/b"), &meta()).await, Err(StoreError::LimitReached(_))));
    // Bytes: the dtabs in service, together.
    let big = dtab(&format!("/a=>/{}", "x".repeat(40)));
    let grown = store.put(&ns("b"), &big, &meta()).await;
    assert!(matches!(grown, Err(StoreError::LimitReached(ref why)) if why.contains("max_stored_bytes")), "{grown:?}");
    assert_eq!(store.get(&ns("b")).await.unwrap().dtab, dtab("/a=>/b"));
    store.put(&ns("b"), &dtab("/a=>/bbbbbbbbbbbbbbbb"), &meta()).await.unwrap();
    // Deleting makes room.
    store.delete(&ns("a"), &meta()).await.unwrap();
    store.create(&ns("c"), &dtab("/a=>/b"), &meta()).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_history_of_namespaces_deleted_long_ago_is_forgotten() {
    let store = MemoryStore::new();
    for i in 0..=waymark_store::MAX_DELETED_HISTORIES {
        let name = ns(&format!("gone-{i}"));
        store.create(&name, &dtab("/a=>/b"), &meta()).await.unwrap();
        store.delete(&name, &meta()).await.unwrap();
    }
    assert_eq!(store.history(&ns("gone-0")).await, Err(StoreError::NotFound(ns("gone-0"))));
    assert_eq!(store.history(&ns("gone-1")).await.unwrap().len(), 2);
    // Re-created, a namespace is no longer among the deleted.
    store.create(&ns("gone-1"), &dtab("/a=>/c"), &meta()).await.unwrap();
    assert_eq!(store.history(&ns("gone-1")).await.unwrap().len(), 3);
}
