//! The file store: the conformance suite over a temporary directory, and what only files
//! have: hand edits, other processes, crashes and polling.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use tempfile::TempDir;
use waymark_store::conformance::{
    Backend, cas_stress, conformance_tests, dtab, eventually, meta, ns, until, until_dtab,
};
use waymark_store::{ChangeMeta, DtabStore, FileStore, FileStoreOptions, StoreConfig, StoreError, StoreMetrics};

/// Store instances over one temporary directory, each with its own lock handles and
/// file-system watcher, as separate processes would have.
struct FileBackend {
    dir: TempDir,
}

impl FileBackend {
    fn new() -> Self {
        waymark_test_support::init_tracing();
        FileBackend { dir: tempfile::tempdir().unwrap() }
    }

    fn options(&self, history_limit: usize) -> FileStoreOptions {
        FileStoreOptions { history_limit, ..FileStoreOptions::new(self.dir.path()) }
    }

    async fn open_file_store(&self, options: FileStoreOptions) -> FileStore {
        FileStore::open(options).await.unwrap()
    }

    fn path(&self, file: &str) -> std::path::PathBuf {
        self.dir.path().join(file)
    }
}

#[async_trait]
impl Backend for FileBackend {
    async fn open(&self, history_limit: usize) -> Arc<dyn DtabStore> {
        Arc::new(self.open_file_store(self.options(history_limit)).await)
    }
}

conformance_tests!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    FileBackend::new()
);

fn scrape(registry: &Registry) -> String {
    let mut text = String::new();
    encode(&mut text, registry).unwrap();
    text
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_namespace_is_a_file_of_canonical_text() {
    let backend = FileBackend::new();
    let store = backend.open(10).await;
    store.create(&ns("web"), &dtab("/svc => /#/io.l5d.fs ;\n /svc/web => /s/web"), &meta()).await.unwrap();
    store.create(&ns("api"), &dtab("/a=>/b"), &meta()).await.unwrap();
    assert_eq!(fs::read_to_string(backend.path("web.dtab")).unwrap(), "/svc=>/#/io.l5d.fs;/svc/web=>/s/web\n");
    assert_eq!(file_names(backend.dir.path()), vec![".waymark", "api.dtab", "web.dtab"]);
    assert_eq!(file_names(&backend.path(".waymark/history")), vec!["api.jsonl", "web.jsonl"]);
    let history = fs::read_to_string(backend.path(".waymark/history/web.jsonl")).unwrap();
    assert!(history.contains(r#""dtab":"/svc=>/#/io.l5d.fs;/svc/web=>/s/web""#), "{history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_edits_reach_watchers_and_history() {
    let backend = FileBackend::new();
    let store = backend.open(10).await;
    let v1 = store.create(&ns("web"), &dtab("/a=>/b"), &ChangeMeta::by("alice")).await.unwrap();

    // Rewritten in place, the way many editors and `echo >` do it.
    fs::write(backend.path("web.dtab"), "# edited by hand\n/a => /c;\n").unwrap();
    let seen = until_dtab(store.as_ref(), "web", Some("/a=>/c")).await.unwrap();
    assert_ne!(seen.version, v1);
    assert_eq!(store.get(&ns("web")).await.unwrap(), seen);

    let history = store.history(&ns("web")).await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].version, seen.version);
    assert_eq!(history[0].dtab, Some(dtab("/a=>/c")));
    assert_eq!(
        (history[0].author.as_deref(), history[0].message.as_deref()),
        (None, Some("changed outside the store"))
    );

    // The version of a hand edit works for compare-and-swap like any other.
    store.update(&ns("web"), &dtab("/a=>/d"), &seen.version, &meta()).await.unwrap();

    // A new file is a new namespace; a removed one is a deletion.
    fs::write(backend.path("api.dtab"), "/x=>/y\n").unwrap();
    until_dtab(store.as_ref(), "api", Some("/x=>/y")).await;
    let mut list = store.watch_list();
    until(&mut list, "api and web", |l| **l == [ns("api"), ns("web")]).await;
    fs::remove_file(backend.path("web.dtab")).unwrap();
    until_dtab(store.as_ref(), "web", None).await;
    assert_eq!(store.list().await.unwrap(), vec![ns("api")]);
    let history = store.history(&ns("web")).await.unwrap();
    assert_eq!(history[0].dtab, None);
    assert_eq!(history[0].message.as_deref(), Some("changed outside the store"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_does_not_parse_keeps_the_last_good_dtab_and_is_counted() {
    let backend = FileBackend::new();
    let metrics = StoreMetrics::new();
    let mut registry = Registry::with_prefix("waymark");
    metrics.register(&mut registry);
    let config: StoreConfig =
        serde_saphyr::from_str(&format!("kind: file\ndir: {}\n", backend.dir.path().display())).unwrap();
    let store = config.build_instrumented(&metrics).await.unwrap();
    let good = store.create(&ns("web"), &dtab("/a=>/good"), &meta()).await.unwrap();
    let mut rx = store.watch(&ns("web"));

    fs::write(backend.path("web.dtab"), "/a => => broken\n").unwrap();
    eventually("the parse failure to be counted", || metrics.parse_failures().failures() == 1).await;
    assert_eq!(metrics.parse_failures().invalid(), 1);
    let text = scrape(&registry);
    assert!(text.contains("waymark_store_parse_failures_total 1"), "{text}");
    assert!(text.contains("waymark_store_invalid_entries 1"), "{text}");

    // Watchers keep the last good dtab; a read explains what is wrong.
    let current = rx.borrow_and_update().clone().unwrap();
    assert_eq!((current.version, current.dtab), (good.clone(), dtab("/a=>/good")));
    match store.get(&ns("web")).await {
        Err(StoreError::Invalid(msg)) => assert!(msg.contains("web.dtab") && msg.contains("last good"), "{msg}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert_eq!(store.list().await.unwrap(), vec![ns("web")]);
    // Compare-and-swap on the last good version fails: the file has changed since.
    assert_eq!(store.update(&ns("web"), &dtab("/a=>/x"), &good, &meta()).await, Err(StoreError::Conflict));

    // The same bad content is reported once; a different one again.
    fs::write(backend.path("other.dtab"), "/a => /b\n").unwrap();
    until_dtab(store.as_ref(), "other", Some("/a=>/b")).await;
    assert_eq!(metrics.parse_failures().failures(), 1);
    fs::write(backend.path("web.dtab"), "still broken\n").unwrap();
    eventually("the second parse failure to be counted", || metrics.parse_failures().failures() == 2).await;
    assert!(!rx.has_changed().unwrap());

    // Fixing the file by hand puts it back in service; so would a put.
    fs::write(backend.path("web.dtab"), "/a => /fixed\n").unwrap();
    until(&mut rx, "the fixed dtab", |v| v.as_ref().is_some_and(|v| v.dtab == dtab("/a=>/fixed"))).await;
    assert_eq!(metrics.parse_failures().invalid(), 0);
    assert!(scrape(&registry).contains("waymark_store_invalid_entries 0"));
    // Broken content never enters history.
    let history = store.history(&ns("web")).await.unwrap();
    assert_eq!(
        history.iter().map(|e| e.dtab.clone().unwrap().to_string()).collect::<Vec<_>>(),
        ["/a=>/fixed", "/a=>/good"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_never_parsed_is_listed_but_not_served() {
    let backend = FileBackend::new();
    let store = backend.open(10).await;
    let file_store = FileStore::open(backend.options(10)).await.unwrap();
    fs::write(backend.path("bad.dtab"), "nonsense\n").unwrap();
    eventually("the parse failure to be counted", || file_store.parse_failures().failures() == 1).await;
    assert_eq!(*store.watch(&ns("bad")).borrow(), None);
    assert_eq!(store.list().await.unwrap(), vec![ns("bad")]);
    assert!(store.watch_list().borrow().is_empty());
    assert_eq!(store.create(&ns("bad"), &dtab("/a=>/b"), &meta()).await, Err(StoreError::Exists));
    store.put(&ns("bad"), &dtab("/a=>/b"), &meta()).await.unwrap();
    until_dtab(store.as_ref(), "bad", Some("/a=>/b")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_writing_the_directory_is_seen() {
    let backend = FileBackend::new();
    let store = backend.open(10).await;
    let mut rx = store.watch(&ns("web"));
    let script = "printf '/svc => /s/from-a-process\\n' > \"$1/.web.tmp\" && mv \"$1/.web.tmp\" \"$1/web.dtab\"";
    let status = Command::new("sh").args(["-c", script, "sh"]).arg(backend.dir.path()).status().unwrap();
    assert!(status.success());
    until(&mut rx, "the other process's write", |v| {
        v.as_ref().is_some_and(|v| v.dtab == dtab("/svc=>/s/from-a-process"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_alone_sees_changes() {
    let backend = FileBackend::new();
    let options =
        FileStoreOptions { fs_events: false, poll_interval: Duration::from_millis(20), ..backend.options(10) };
    let store = backend.open_file_store(options).await;
    fs::write(backend.path("web.dtab"), "/a=>/b\n").unwrap();
    until_dtab(&store, "web", Some("/a=>/b")).await;
    fs::write(backend.path("web.dtab"), "/a=>/c\n").unwrap();
    until_dtab(&store, "web", Some("/a=>/c")).await;
    fs::remove_file(backend.path("web.dtab")).unwrap();
    until_dtab(&store, "web", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_file_is_a_write_in_progress_and_keeps_the_last_good_dtab() {
    let backend = FileBackend::new();
    let options =
        FileStoreOptions { fs_events: false, poll_interval: Duration::from_millis(10), ..backend.options(10) };
    let store = backend.open_file_store(options).await;
    let version = store.create(&ns("web"), &dtab("/a=>/b"), &meta()).await.unwrap();
    fs::write(backend.path("web.dtab"), "").unwrap();
    fs::write(backend.path("marker.dtab"), "/m=>/m\n").unwrap();
    // Once a later change is in, the scan that saw the empty file has run.
    until_dtab(&store, "marker", Some("/m=>/m")).await;
    assert_eq!(store.watch(&ns("web")).borrow().as_ref().map(|v| &v.version), Some(&version));
    assert_eq!(store.parse_failures().failures(), 0);
    assert!(matches!(store.get(&ns("web")).await, Err(StoreError::Invalid(msg)) if msg.contains("empty")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_survives_reopening_and_changes_made_while_closed_are_recorded() {
    let backend = FileBackend::new();
    let store = backend.open(10).await;
    let v1 = store.create(&ns("web"), &dtab("/a=>/b"), &ChangeMeta::by("alice")).await.unwrap();
    store.create(&ns("gone"), &dtab("/a=>/b"), &meta()).await.unwrap();
    drop(store);

    fs::write(backend.path("web.dtab"), "/a=>/while-closed\n").unwrap();
    fs::remove_file(backend.path("gone.dtab")).unwrap();
    let reopened = backend.open(10).await;
    let history = reopened.history(&ns("web")).await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].dtab, Some(dtab("/a=>/while-closed")));
    assert_eq!(history[1].version, v1);
    assert_eq!(history[1].author.as_deref(), Some("alice"));
    let gone = reopened.history(&ns("gone")).await.unwrap();
    assert_eq!(gone.iter().map(|e| e.dtab.is_some()).collect::<Vec<_>>(), [false, true]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_files_left_by_a_crash_are_removed_and_never_served() {
    let backend = FileBackend::new();
    backend.open(10).await;
    let leftover = backend.path(".web.dtab.123-0.waymark-tmp");
    fs::write(&leftover, "/half=>/writ").unwrap();
    fs::write(backend.path("notes.txt"), "not a dtab").unwrap();
    let store = backend.open(10).await;
    assert!(!leftover.exists());
    assert!(store.list().await.unwrap().is_empty());
    assert!(backend.path("notes.txt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_directory_is_an_error_unless_it_may_be_created() {
    let backend = FileBackend::new();
    let missing = backend.path("not/yet");
    let result = FileStore::open(FileStoreOptions::new(&missing)).await;
    assert!(matches!(&result, Err(StoreError::Invalid(msg)) if msg.contains("does not exist")), "{result:?}");
    let store =
        FileStore::open(FileStoreOptions { create_dir: true, ..FileStoreOptions::new(&missing) }).await.unwrap();
    store.create(&ns("web"), &dtab("/a=>/b"), &meta()).await.unwrap();
    assert!(missing.join("web.dtab").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_swap_through_two_instances_loses_no_update() {
    let backend = FileBackend::new();
    let first = backend.open(2000).await;
    let second = backend.open(2000).await;
    cas_stress(first, second, 8, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn putting_back_the_last_good_content_clears_the_failure() {
    let backend = FileBackend::new();
    let store = backend.open_file_store(backend.options(10)).await;
    let version = store.create(&ns("web"), &dtab("/a=>/b"), &meta()).await.unwrap();
    let good = fs::read(backend.path("web.dtab")).unwrap();
    fs::write(backend.path("web.dtab"), "broken =>\n").unwrap();
    eventually("the failure to be counted", || store.parse_failures().invalid() == 1).await;
    fs::write(backend.path("web.dtab"), &good).unwrap();
    eventually("the failure to clear", || store.parse_failures().invalid() == 0).await;
    assert_eq!(store.get(&ns("web")).await.unwrap().version, version);
    assert_eq!(store.parse_failures().failures(), 1);
    assert_eq!(store.history(&ns("web")).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_history_cannot_be_recorded_fails_and_changes_nothing() {
    let backend = FileBackend::new();
    let store = backend.open(5).await;
    let version = store.create(&ns("web"), &dtab("/a=>/b"), &meta()).await.unwrap();
    // A history log that cannot be opened for appending, whoever the test runs as.
    let log = backend.path(".waymark/history/web.jsonl");
    fs::remove_file(&log).unwrap();
    fs::create_dir(&log).unwrap();

    let update = store.update(&ns("web"), &dtab("/a=>/c"), &version, &meta()).await;
    assert!(matches!(update, Err(StoreError::Unavailable(ref why)) if why.contains("web.jsonl")), "{update:?}");
    assert_eq!(store.get(&ns("web")).await.unwrap().dtab, dtab("/a=>/b"));
    assert!(matches!(store.delete(&ns("web"), &meta()).await, Err(StoreError::Unavailable(_))));
    assert_eq!(fs::read_to_string(backend.path("web.dtab")).unwrap(), "/a=>/b\n");

    fs::create_dir(backend.path(".waymark/history/api.jsonl")).unwrap();
    assert!(matches!(store.create(&ns("api"), &dtab("/a=>/b"), &meta()).await, Err(StoreError::Unavailable(_))));
    assert!(!backend.path("api.dtab").exists());

    fs::remove_dir(&log).unwrap();
    let next = store.update(&ns("web"), &dtab("/a=>/c"), &version, &meta()).await.unwrap();
    let history = store.history(&ns("web")).await.unwrap();
    assert_eq!(history[0].version, next);
}
