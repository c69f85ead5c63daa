//! Update-to-watch latency of each backend: the time from calling `update` until a watch
//! holds the new dtab, on the writing instance and on a second instance over the same backing
//! data (another namer process, in production). etcd runs on loopback as in the tests.
//!
//! `cargo bench -p waymark-store --bench watch_latency` measures; without `--bench` (as in
//! `cargo test --benches`) it makes a few updates per backend as a smoke test.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use waymark_store::{
    ChangeMeta, DtabStore, EtcdStore, EtcdStoreOptions, FileStore, FileStoreOptions, MemoryStore, Namespace,
};
use waymark_test_support::EtcdServer;

/// Gives up on a watch that never fires, so a broken store fails the run instead of hanging.
const HANG_GUARD: Duration = Duration::from_secs(30);

fn main() -> anyhow::Result<()> {
    let measuring = std::env::args().any(|arg| arg == "--bench");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(run(measuring))
}

async fn run(measuring: bool) -> anyhow::Result<()> {
    let (memory_updates, durable_updates) = if measuring { (5000, 500) } else { (5, 5) };
    println!("{:<28} {:>6}  {:>21}  {:>21}", "backend / watcher", "n", "update p50 / p99", "update-to-watch p50 / p99");

    let memory: Arc<dyn DtabStore> = Arc::new(MemoryStore::new());
    report("memory / same instance", &measure(&memory, &memory, memory_updates).await?);

    let dir = tempfile::tempdir()?;
    let open_file = || async { anyhow::Ok(Arc::new(FileStore::open(FileStoreOptions::new(dir.path())).await?)) };
    let (file_writer, file_watcher): (Arc<dyn DtabStore>, Arc<dyn DtabStore>) =
        (open_file().await?, open_file().await?);
    report("file / same instance", &measure(&file_writer, &file_writer, durable_updates).await?);
    report("file / other instance", &measure(&file_writer, &file_watcher, durable_updates).await?);

    let server = tokio::task::block_in_place(EtcdServer::start).context("starting etcd")?;
    let open_etcd = || async {
        let store = EtcdStore::connect(EtcdStoreOptions::new([server.endpoint()])).await?;
        store.health().wait_for(|h| h.synced).await?;
        anyhow::Ok(Arc::new(store))
    };
    let (etcd_writer, etcd_watcher): (Arc<dyn DtabStore>, Arc<dyn DtabStore>) =
        (open_etcd().await?, open_etcd().await?);
    report("etcd / same instance", &measure(&etcd_writer, &etcd_writer, durable_updates).await?);
    report("etcd / other instance", &measure(&etcd_writer, &etcd_watcher, durable_updates).await?);
    Ok(())
}

/// Per update: how long `update` took, and how long until the watcher held the new dtab.
struct Samples {
    update: Vec<Duration>,
    visible: Vec<Duration>,
}

async fn measure(writer: &Arc<dyn DtabStore>, watcher: &Arc<dyn DtabStore>, updates: usize) -> anyhow::Result<Samples> {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let ns: Namespace = format!("bench-{}", RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)).parse()?;
    let mut version = writer.put(&ns, &"/bench=>/start".parse()?, &ChangeMeta::default()).await?;
    let mut samples = Samples { update: Vec::with_capacity(updates), visible: Vec::with_capacity(updates) };
    for i in 0..updates {
        let next: waymark_dtab::Dtab = format!("/bench=>/{i}").parse()?;
        let mut rx = watcher.watch(&ns);
        let expected = next.clone();
        // Waits in its own task, so the moment the watch fires is not hidden behind `update`.
        let seen = tokio::spawn(async move {
            tokio::time::timeout(HANG_GUARD, rx.wait_for(|v| v.as_ref().is_some_and(|v| v.dtab == expected)))
                .await
                .map(|_| Instant::now())
        });
        let start = Instant::now();
        version = writer.update(&ns, &next, &version, &ChangeMeta::default()).await?;
        samples.update.push(start.elapsed());
        let Ok(seen) = seen.await? else { bail!("the watch never showed update {i}") };
        samples.visible.push(seen.saturating_duration_since(start));
    }
    Ok(samples)
}

fn report(name: &str, samples: &Samples) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pct = |values: &[Duration], p: usize| {
        let mut sorted = values.to_vec();
        sorted.sort();
        sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
    };
    println!(
        "{name:<28} {:>6}  {:>8.3} / {:>8.3} ms  {:>8.3} / {:>8.3} ms",
        samples.update.len(),
        ms(pct(&samples.update, 50)),
        ms(pct(&samples.update, 99)),
        ms(pct(&samples.visible, 50)),
        ms(pct(&samples.visible, 99)),
    );
}
