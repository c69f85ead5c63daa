//! The etcd store (etcd v3 API).
//!
//! Keys, under a configurable prefix (default `/waymark/dtabs/`):
//!
//! ```text
//! <prefix><namespace>                      the dtab in canonical text
//! <prefix><namespace>/history/<unique id>  one history record (JSON), written in the same
//!                                          transaction as the change it records
//! ```
//!
//! A namespace name never holds `/`, so namespace keys and history keys cannot be confused.
//! The version is the key's `mod_revision`; `create` compares `create_revision == 0`,
//! `update` compares `mod_revision`, and a history entry's version is its key's
//! `create_revision`, which is the revision of the transaction that wrote both.
//!
//! One background task keeps a local copy of every namespace: a full read at start, then a
//! single watch over the prefix. After a disconnect it resumes the watch from the revision
//! after the last one it saw, so no change is missed; if etcd has compacted that revision
//! away, it reads everything again. While etcd is unreachable, calls fail at once with
//! [`StoreError::Unavailable`], watches keep their last values, and the task reconnects with
//! backoff. Writes made directly to etcd (for example with `etcdctl`) reach watches but get no
//! history record; a value that does not parse keeps the last good dtab in service and is
//! counted in [`ParseFailureMetrics`].

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity, KeyValue, SortOrder,
    SortTarget, TlsOptions, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchOptions,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info, warn};
use waymark_dtab::Dtab;

use crate::canonical::{HistoryRecord, canonical_text, parse_stored};
use crate::error::StoreError;
use crate::hub::WatchHub;
use crate::memory::DEFAULT_HISTORY_LIMIT;
use crate::metrics::ParseFailureMetrics;
use crate::namespace::Namespace;
use crate::store::{
    ChangeMeta, DtabStore, HistoryEntry, HistoryPage, HistorySlice, StoreHealth, Version, VersionedDtab,
};

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "/waymark/dtabs/";
/// How many reads one transaction batches during a full read; etcd allows 128 operations per
/// transaction by default.
const READ_BATCH: usize = 64;
/// gRPC status codes etcd uses for bad requests and for refused credentials.
const GRPC_INVALID_ARGUMENT: i32 = 3;
const GRPC_PERMISSION_DENIED: i32 = 7;
const GRPC_UNAUTHENTICATED: i32 = 16;

/// How an [`EtcdStore`] connects.
#[derive(Clone)]
pub struct EtcdStoreOptions {
    /// Client URLs (`http://host:port` or `https://host:port`).
    pub endpoints: Vec<String>,
    /// The key prefix; it should end with `/`.
    pub prefix: String,
    /// How many history entries each namespace keeps.
    pub history_limit: usize,
    /// How long to wait for a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// How long one request may take before it fails as unavailable.
    pub request_timeout: Duration,
    /// How often to ping an idle connection; a connection that does not answer within
    /// `request_timeout` is taken as broken.
    pub keep_alive_interval: Duration,
    /// The longest wait between reconnection attempts.
    pub max_backoff: Duration,
    /// User name and password for etcd authentication.
    pub credentials: Option<(String, String)>,
    /// TLS settings, for `https` endpoints.
    pub tls: Option<EtcdTls>,
    /// Where to count values that do not parse.
    pub parse_failures: ParseFailureMetrics,
}

/// TLS material for etcd, in PEM.
#[derive(Debug, Clone, Default)]
pub struct EtcdTls {
    /// The CA certificate(s) that sign etcd's server certificates.
    pub ca_pem: Vec<u8>,
    /// A client certificate and its private key, for etcd's client-certificate auth.
    pub identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    /// The name to expect in the server certificate, when it differs from the endpoint host.
    pub server_name: Option<String>,
}

/// Dtabs kept in etcd; see the [module documentation](self).
#[derive(Debug)]
pub struct EtcdStore {
    shared: Arc<Shared>,
    sync: JoinHandle<()>,
}

struct Shared {
    client: OnceLock<Client>,
    connect: ConnectOptions,
    endpoints: Vec<String>,
    prefix: String,
    history_limit: usize,
    request_timeout: Duration,
    max_backoff: Duration,
    hub: WatchHub,
    health: watch::Sender<StoreHealth>,
    parse_failures: ParseFailureMetrics,
    /// Namespaces whose value does not parse, with the revision of the bad value, so each bad
    /// value is reported once. Only changed under the hub lock.
    broken: Mutex<HashMap<Namespace, i64>>,
    relists: AtomicU64,
}

/// How a watch ended.
enum WatchEnd {
    /// The revision to resume from has been compacted away: read everything again.
    Compacted,
    /// The connection or the watch failed: reconnect and resume.
    Failed(String),
}

impl EtcdStoreOptions {
    /// Defaults for `endpoints`: prefix `/waymark/dtabs/`, 100 history entries, 2 s to
    /// connect, 5 s per request, a keep-alive ping every 10 s, reconnecting at least every 5 s.
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        EtcdStoreOptions {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            prefix: DEFAULT_PREFIX.to_string(),
            history_limit: DEFAULT_HISTORY_LIMIT,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            keep_alive_interval: Duration::from_secs(10),
            max_backoff: Duration::from_secs(5),
            credentials: None,
            tls: None,
            parse_failures: ParseFailureMetrics::default(),
        }
    }
}

impl std::fmt::Debug for EtcdStoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStoreOptions")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("history_limit", &self.history_limit)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("user", &self.credentials.as_ref().map(|(user, _)| user))
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Starts the store. It does not wait for etcd: while etcd cannot be reached, calls fail
    /// with [`StoreError::Unavailable`] and [`DtabStore::health`] says why, until the
    /// background task connects. Must be called inside a tokio runtime.
    pub async fn connect(options: EtcdStoreOptions) -> Result<EtcdStore, StoreError> {
        if options.endpoints.is_empty() {
            return Err(StoreError::Invalid("no etcd endpoints are configured".to_string()));
        }
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(options.connect_timeout)
            .with_keep_alive(options.keep_alive_interval, options.request_timeout)
            .with_keep_alive_while_idle(true);
        if let Some((user, password)) = &options.credentials {
            connect = connect.with_user(user.clone(), password.clone()).with_auto_token_refresh(true);
        }
        if let Some(tls) = &options.tls {
            let mut config = TlsOptions::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
            if let Some((cert, key)) = &tls.identity_pem {
                config = config.identity(Identity::from_pem(cert, key));
            }
            if let Some(name) = &tls.server_name {
                config = config.domain_name(name.clone());
            }
            connect = connect.with_tls(config);
        }
        let shared = Arc::new(Shared {
            client: OnceLock::new(),
            connect,
            endpoints: options.endpoints.clone(),
            prefix: options.prefix.clone(),
            history_limit: options.history_limit.max(1),
            request_timeout: options.request_timeout,
            max_backoff: options.max_backoff,
            hub: WatchHub::new(),
            health: watch::channel(StoreHealth::default()).0,
            parse_failures: options.parse_failures.clone(),
            broken: Mutex::new(HashMap::new()),
            relists: AtomicU64::new(0),
        });
        // Without credentials this does not touch the network; with them it authenticates, and
        // if etcd is down the background task keeps trying.
        match shared.connect_client().await {
            Ok(_) => {}
            Err(StoreError::Invalid(cause)) => return Err(StoreError::Invalid(cause)),
            Err(e) => shared.set_health(false, Some(cause_text(&e))),
        }
        let span = tracing::info_span!("etcd_store_sync", endpoints = ?shared.endpoints, prefix = %shared.prefix);
        let sync = tokio::spawn(Arc::clone(&shared).sync().instrument(span));
        Ok(EtcdStore { shared, sync })
    }

    /// How many full reads of the prefix the store has made: one at start, then one each
    /// time the watch could not resume because etcd had compacted the revision it needed.
    pub fn relists(&self) -> u64 {
        self.shared.relists.load(Ordering::Relaxed)
    }

    /// The counts of values that did not parse.
    pub fn parse_failures(&self) -> &ParseFailureMetrics {
        &self.shared.parse_failures
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        self.sync.abort();
    }
}

#[async_trait]
impl DtabStore for EtcdStore {
    async fn list(&self) -> Result<Vec<Namespace>, StoreError> {
        let s = &self.shared;
        let mut kv = s.client()?.kv_client();
        let options = GetOptions::new().with_prefix().with_keys_only();
        let response = s.call(kv.get(s.prefix.as_bytes(), Some(options))).await?;
        let mut namespaces: Vec<Namespace> = response.kvs().iter().filter_map(|kv| s.namespace_of(kv.key())).collect();
        namespaces.sort();
        Ok(namespaces)
    }

    async fn get(&self, ns: &Namespace) -> Result<VersionedDtab, StoreError> {
        let s = &self.shared;
        let key = s.key(ns);
        let response = s.call(s.client()?.kv_client().get(key.as_bytes(), None)).await?;
        let kv = response.kvs().first().ok_or_else(|| StoreError::NotFound(ns.clone()))?;
        let dtab = parse_stored(kv.value()).map_err(|e| {
            StoreError::Invalid(format!("etcd key {key} does not parse: {e}; its last good dtab stays in service"))
        })?;
        Ok(VersionedDtab { version: revision_version(kv.mod_revision()), dtab })
    }

    async fn create(&self, ns: &Namespace, dtab: &Dtab, meta: &ChangeMeta) -> Result<Version, StoreError> {
        let s = &self.shared;
        let (text, _) = canonical_text(dtab)?;
        let key = s.key(ns);
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_bytes(), CompareOp::Equal, 0)])
            .and_then(s.write_ops(ns, Some(&text), meta));
        let response = s.call(s.client()?.kv_client().txn(txn)).await?;
        if !response.succeeded() {
            return Err(StoreError::Exists);
        }
        s.written(ns, &response).await;
        Ok(revision_version(txn_revision(&response)))
    }

    async fn put(&self, ns: &Namespace, dtab: &Dtab, meta: &ChangeMeta) -> Result<Version, StoreError> {
        let s = &self.shared;
        let (text, _) = canonical_text(dtab)?;
        let txn = Txn::new().and_then(s.write_ops(ns, Some(&text), meta));
        let response = s.call(s.client()?.kv_client().txn(txn)).await?;
        s.written(ns, &response).await;
        Ok(revision_version(txn_revision(&response)))
    }

    async fn update(
        &self,
        ns: &Namespace,
        dtab: &Dtab,
        expected: &Version,
        meta: &ChangeMeta,
    ) -> Result<Version, StoreError> {
        let s = &self.shared;
        let (text, _) = canonical_text(dtab)?;
        let key = s.key(ns);
        let txn = Txn::new()
            .when([Compare::mod_revision(key.as_bytes(), CompareOp::Equal, expected_revision(expected))])
            .and_then(s.write_ops(ns, Some(&text), meta))
            .or_else([TxnOp::get(key.as_bytes(), Some(GetOptions::new().with_count_only()))]);
        let response = s.call(s.client()?.kv_client().txn(txn)).await?;
        if !response.succeeded() {
            return Err(not_written(ns, &response));
        }
        s.written(ns, &response).await;
        Ok(revision_version(txn_revision(&response)))
    }

    async fn delete(&self, ns: &Namespace, meta: &ChangeMeta) -> Result<(), StoreError> {
        let s = &self.shared;
        let key = s.key(ns);
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_bytes(), CompareOp::Greater, 0)])
            .and_then(s.write_ops(ns, None, meta));
        let response = s.call(s.client()?.kv_client().txn(txn)).await?;
        if !response.succeeded() {
            return Err(StoreError::NotFound(ns.clone()));
        }
        s.written(ns, &response).await;
        Ok(())
    }

    async fn delete_at(&self, ns: &Namespace, expected: &Version, meta: &ChangeMeta) -> Result<(), StoreError> {
        let s = &self.shared;
        let key = s.key(ns);
        let txn = Txn::new()
            .when([Compare::mod_revision(key.as_bytes(), CompareOp::Equal, expected_revision(expected))])
            .and_then(s.write_ops(ns, None, meta))
            .or_else([TxnOp::get(key.as_bytes(), Some(GetOptions::new().with_count_only()))]);
        let response = s.call(s.client()?.kv_client().txn(txn)).await?;
        if !response.succeeded() {
            return Err(not_written(ns, &response));
        }
        s.written(ns, &response).await;
        Ok(())
    }

    async fn history(&self, ns: &Namespace) -> Result<Vec<HistoryEntry>, StoreError> {
        let s = &self.shared;
        let mut kv = s.client()?.kv_client();
        let limit = i64::try_from(s.history_limit).unwrap_or(i64::MAX);
        let options =
            GetOptions::new().with_prefix().with_sort(SortTarget::Create, SortOrder::Descend).with_limit(limit);
        let response = s.call(kv.get(s.history_prefix(ns).as_bytes(), Some(options))).await?;
        let entries: Vec<HistoryEntry> = response
            .kvs()
            .iter()
            .filter_map(|kv| {
                let entry = HistoryRecord::from_json(kv.value())
                    .and_then(|record| record.into_entry(Some(revision_version(kv.create_revision()))));
                match entry {
                    Ok(entry) => Some(entry),
                    Err(error) => {
                        warn!(key = %String::from_utf8_lossy(kv.key()), %error, "skipping a history record that does not parse");
                        None
                    }
                }
            })
            .collect();
        if entries.is_empty() {
            let exists = s.call(kv.get(s.key(ns).as_bytes(), Some(GetOptions::new().with_count_only()))).await?;
            if exists.count() == 0 {
                return Err(StoreError::NotFound(ns.clone()));
            }
        }
        Ok(entries)
    }

    /// Lists the page's keys first, then fetches their values a few at a time until the page
    /// is full, so that a page costs what is on it.
    async fn history_page(&self, ns: &Namespace, page: &HistoryPage) -> Result<HistorySlice, StoreError> {
        let s = &self.shared;
        let mut kv = s.client()?.kv_client();
        let wanted = page.offset.saturating_add(page.limit).saturating_add(1).min(s.history_limit);
        let keys = GetOptions::new()
            .with_prefix()
            .with_keys_only()
            .with_sort(SortTarget::Create, SortOrder::Descend)
            .with_limit(i64::try_from(wanted).unwrap_or(i64::MAX));
        let listed = s.call(kv.get(s.history_prefix(ns).as_bytes(), Some(keys))).await?;
        if listed.kvs().is_empty() {
            let exists = s.call(kv.get(s.key(ns).as_bytes(), Some(GetOptions::new().with_count_only()))).await?;
            if exists.count() == 0 && page.offset == 0 {
                return Err(StoreError::NotFound(ns.clone()));
            }
        }
        let keys: Vec<Vec<u8>> = listed.kvs().iter().skip(page.offset).map(|kv| kv.key().to_vec()).collect();
        let (mut entries, mut bytes) = (Vec::new(), 0usize);
        for batch in keys.chunks(HISTORY_PAGE_BATCH) {
            let gets: Vec<TxnOp> = batch.iter().map(|key| TxnOp::get(key.clone(), None)).collect();
            let response = s.call(kv.txn(Txn::new().and_then(gets))).await?;
            for op in response.op_responses() {
                let TxnOpResponse::Get(get) = op else { continue };
                for kv in get.kvs() {
                    let record = match HistoryRecord::from_json(kv.value()) {
                        Ok(record) => record,
                        Err(error) => {
                            warn!(key = %String::from_utf8_lossy(kv.key()), %error, "skipping a history record that does not parse");
                            continue;
                        }
                    };
                    let size = record.dtab.as_ref().map_or(0, String::len);
                    if entries.len() >= page.limit || (!entries.is_empty() && bytes + size > page.max_bytes) {
                        return Ok(HistorySlice { entries, more: true });
                    }
                    match record.into_entry(Some(revision_version(kv.create_revision()))) {
                        Ok(entry) => {
                            bytes += size;
                            entries.push(entry);
                        }
                        Err(error) => warn!(%error, "skipping a history record that does not parse"),
                    }
                }
            }
        }
        let more = listed.kvs().len() > page.offset + entries.len() && entries.len() >= page.limit;
        Ok(HistorySlice { entries, more })
    }

    fn watch(&self, ns: &Namespace) -> watch::Receiver<Option<VersionedDtab>> {
        self.shared.hub.subscribe(ns)
    }

    fn watch_list(&self) -> watch::Receiver<Arc<Vec<Namespace>>> {
        self.shared.hub.subscribe_list()
    }

    fn health(&self) -> watch::Receiver<StoreHealth> {
        self.shared.health.subscribe()
    }
}

impl Shared {
    fn key(&self, ns: &Namespace) -> String {
        format!("{}{ns}", self.prefix)
    }

    fn history_prefix(&self, ns: &Namespace) -> String {
        format!("{}{ns}/history/", self.prefix)
    }

    /// A new history key. The time first keeps `etcdctl get --prefix` output roughly in
    /// order; the random part keeps concurrent writers apart. Order is taken from the key's
    /// create revision, never from its name.
    fn history_key(&self, ns: &Namespace) -> String {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u128(nanos);
        format!("{}{nanos:020}-{:016x}", self.history_prefix(ns), hasher.finish())
    }

    fn namespace_of(&self, key: &[u8]) -> Option<Namespace> {
        namespace_of(&self.prefix, key)
    }

    /// The operations of a write: the value (or its deletion), its history record, and a
    /// count of the history records, to know when to trim them.
    fn write_ops(&self, ns: &Namespace, text: Option<&str>, meta: &ChangeMeta) -> Vec<TxnOp> {
        let key = self.key(ns);
        let record = HistoryRecord::new(None, text, SystemTime::now(), meta).to_json();
        let change = match text {
            Some(text) => TxnOp::put(key.as_bytes(), text.as_bytes(), None),
            None => TxnOp::delete(key.as_bytes(), None),
        };
        let count = GetOptions::new().with_prefix().with_count_only();
        vec![
            change,
            TxnOp::put(self.history_key(ns).as_bytes(), record.as_bytes(), None),
            TxnOp::get(self.history_prefix(ns).as_bytes(), Some(count)),
        ]
    }

    fn client(&self) -> Result<Client, StoreError> {
        self.client.get().cloned().ok_or_else(|| {
            let cause = self.health.borrow().last_error.clone();
            StoreError::Unavailable(
                cause.unwrap_or_else(|| format!("etcd at {}: not connected yet", self.endpoints.join(","))),
            )
        })
    }

    async fn connect_client(&self) -> Result<Client, StoreError> {
        if let Some(client) = self.client.get() {
            return Ok(client.clone());
        }
        let connecting = Client::connect(&self.endpoints, Some(self.connect.clone()));
        let client = match tokio::time::timeout(self.request_timeout, connecting).await {
            Ok(Ok(client)) => client,
            // Refused credentials are a configuration problem, not an outage.
            Ok(Err(etcd_client::Error::GRpcStatus(status)))
                if [GRPC_INVALID_ARGUMENT, GRPC_PERMISSION_DENIED, GRPC_UNAUTHENTICATED]
                    .contains(&i32::from(status.code())) =>
            {
                let cause = format!("etcd at {}: {}", self.endpoints.join(","), status.message());
                self.set_health(false, Some(cause.clone()));
                return Err(StoreError::Invalid(cause));
            }
            Ok(Err(e)) => {
                let error = self.error(e);
                self.set_health(false, Some(cause_text(&error)));
                return Err(error);
            }
            Err(_) => {
                let cause = format!(
                    "etcd at {}: no answer within {} ms",
                    self.endpoints.join(","),
                    self.request_timeout.as_millis()
                );
                self.set_health(false, Some(cause.clone()));
                return Err(StoreError::Unavailable(cause));
            }
        };
        Ok(self.client.get_or_init(|| client).clone())
    }

    /// Runs one etcd request with the request timeout, turning failures into store errors
    /// and keeping [`StoreHealth`] in step.
    async fn call<T>(&self, request: impl Future<Output = Result<T, etcd_client::Error>>) -> Result<T, StoreError> {
        let result = match tokio::time::timeout(self.request_timeout, request).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.error(e)),
            Err(_) => Err(StoreError::Unavailable(format!(
                "etcd at {} did not answer within {} ms",
                self.endpoints.join(","),
                self.request_timeout.as_millis()
            ))),
        };
        match &result {
            Ok(_) => self.set_health(true, None),
            Err(StoreError::Unavailable(cause)) => self.set_health(false, Some(cause.clone())),
            Err(_) => {}
        }
        result
    }

    /// The store error for a failed request. Only a request too large for etcd is the
    /// caller's fault; anything else etcd refuses (such as missing permissions) is a problem of
    /// this deployment, so it is reported as unavailable with etcd's reason.
    fn error(&self, e: etcd_client::Error) -> StoreError {
        let endpoints = self.endpoints.join(",");
        match &e {
            etcd_client::Error::GRpcStatus(status)
                if i32::from(status.code()) == GRPC_INVALID_ARGUMENT && status.message().contains("too large") =>
            {
                StoreError::Invalid(format!("etcd at {endpoints} refused the request: {}", cause_of(&e)))
            }
            etcd_client::Error::InvalidArgs(_) | etcd_client::Error::InvalidUri(_) => {
                StoreError::Invalid(format!("etcd endpoints {endpoints}: {e}"))
            }
            _ => StoreError::Unavailable(format!("etcd at {endpoints}: {}", cause_of(&e))),
        }
    }

    fn set_health(&self, available: bool, last_error: Option<String>) {
        self.health.send_if_modified(|health| {
            let next = StoreHealth { available, synced: health.synced, last_error };
            let changed = *health != next;
            *health = next;
            changed
        });
    }

    fn set_synced(&self) {
        self.health.send_if_modified(|health| {
            let next = StoreHealth::healthy();
            let changed = *health != next;
            *health = next;
            changed
        });
    }

    /// After a successful write: keeps the namespace's history near its limit. The write's
    /// transaction counted the history entries, so this costs nothing until there are too many.
    /// A failure here only delays trimming to a later write.
    async fn written(&self, ns: &Namespace, response: &TxnResponse) {
        let count = response.op_responses().iter().rev().find_map(|op| match op {
            TxnOpResponse::Get(get) => Some(get.count()),
            _ => None,
        });
        // Trimming in batches, once a quarter of the limit has built up beyond it, costs two
        // round trips every few writes instead of every write; `history` returns no more than
        // the limit meanwhile.
        let count = usize::try_from(count.unwrap_or(0)).unwrap_or(0);
        if count <= self.history_limit + self.history_limit / 4 {
            return;
        }
        let excess = count - self.history_limit;
        if let Err(error) = self.trim_history(ns, excess).await {
            debug!(namespace = %ns, %error, "could not trim history");
        }
    }

    async fn trim_history(&self, ns: &Namespace, excess: usize) -> Result<(), StoreError> {
        let mut kv = self.client()?.kv_client();
        let prefix = self.history_prefix(ns);
        let oldest = GetOptions::new()
            .with_prefix()
            .with_keys_only()
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(i64::try_from(excess).unwrap_or(i64::MAX));
        let oldest = self.call(kv.get(prefix.as_bytes(), Some(oldest))).await?;
        for batch in oldest.kvs().chunks(READ_BATCH) {
            let deletes: Vec<TxnOp> = batch.iter().map(|kv| TxnOp::delete(kv.key(), None)).collect();
            self.call(kv.txn(Txn::new().and_then(deletes))).await?;
        }
        Ok(())
    }

    /// Keeps the hub in step with etcd until the store is dropped: connect, read
    /// everything, watch from there, and on failure reconnect and resume.
    async fn sync(self: Arc<Self>) {
        let mut backoff = Backoff::new(self.max_backoff);
        let mut resume_at: Option<i64> = None;
        loop {
            let client = match self.connect_client().await {
                Ok(client) => client,
                Err(e) => {
                    warn!(error = %e, "cannot connect to etcd; retrying");
                    backoff.wait().await;
                    continue;
                }
            };
            let from = match resume_at {
                Some(revision) => revision,
                None => match self.relist(&client).await {
                    Ok(revision) => {
                        self.set_synced();
                        backoff.reset();
                        revision + 1
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot read the dtabs from etcd; retrying");
                        self.set_health(false, Some(cause_text(&e)));
                        backoff.wait().await;
                        continue;
                    }
                },
            };
            resume_at = Some(from);
            match self.follow(&client, &mut resume_at, &mut backoff).await {
                WatchEnd::Compacted => {
                    info!(revision = from, "etcd compacted the revision to resume from; reading everything again");
                    resume_at = None;
                }
                WatchEnd::Failed(cause) => {
                    let cause = format!("etcd at {}: watch failed: {cause}", self.endpoints.join(","));
                    warn!(error = %cause, resume_at, "lost the etcd watch; resuming after a pause");
                    self.set_health(false, Some(cause));
                    backoff.wait().await;
                }
            }
        }
    }

    /// Reads every namespace at one revision and publishes them all. Returns that revision.
    async fn relist(&self, client: &Client) -> Result<i64, StoreError> {
        let mut kv = client.kv_client();
        let keys =
            self.call(kv.get(self.prefix.as_bytes(), Some(GetOptions::new().with_prefix().with_keys_only()))).await?;
        let revision = keys.header().map_or(0, |h| h.revision());
        let namespaces: Vec<(Namespace, Vec<u8>)> =
            keys.kvs().iter().filter_map(|kv| Some((self.namespace_of(kv.key())?, kv.key().to_vec()))).collect();
        let mut read = Vec::new();
        for batch in namespaces.chunks(READ_BATCH) {
            let gets: Vec<TxnOp> = batch
                .iter()
                .map(|(_, key)| TxnOp::get(key.clone(), Some(GetOptions::new().with_revision(revision))))
                .collect();
            let response = self.call(kv.txn(Txn::new().and_then(gets))).await?;
            for op in response.op_responses() {
                if let TxnOpResponse::Get(get) = op {
                    read.extend(get.kvs().iter().cloned());
                }
            }
        }
        let mut hub = self.hub.lock();
        let mut values = BTreeMap::new();
        let mut broken = self.broken.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for kv in &read {
            let Some(ns) = self.namespace_of(kv.key()) else { continue };
            // A value that does not parse keeps the last good one, if this instance had one.
            if let Some(value) = self.parse_value(&ns, kv, &mut broken).or_else(|| hub.get(&ns)) {
                values.insert(ns, value);
            }
        }
        // Forget bad values of namespaces that no longer exist.
        broken.retain(|ns, _| read.iter().any(|kv| self.namespace_of(kv.key()).as_ref() == Some(ns)));
        self.parse_failures.set_invalid(broken.len());
        drop(broken);
        // Counted before publishing, so that whoever sees the new values sees the count too.
        self.relists.fetch_add(1, Ordering::Relaxed);
        hub.replace_all(values);
        debug!(revision, namespaces = read.len(), "read every dtab");
        Ok(revision)
    }

    /// Follows the watch from `resume_at`, publishing each change and moving `resume_at`
    /// past every revision seen, until the watch ends.
    async fn follow(&self, client: &Client, resume_at: &mut Option<i64>, backoff: &mut Backoff) -> WatchEnd {
        let Some(from) = *resume_at else { return WatchEnd::Compacted };
        let options = WatchOptions::new().with_prefix().with_start_revision(from).with_progress_notify();
        let mut watch_client = client.watch_client();
        let watch = watch_client.watch(self.prefix.as_bytes(), Some(options));
        let mut stream = match tokio::time::timeout(self.request_timeout, watch).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return WatchEnd::Failed(cause_of(&e)),
            Err(_) => {
                return WatchEnd::Failed(format!("no answer within {} ms", self.request_timeout.as_millis()));
            }
        };
        loop {
            let response = match stream.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return WatchEnd::Failed("etcd closed the watch stream".to_string()),
                Err(e) => return WatchEnd::Failed(cause_of(&e)),
            };
            if response.compact_revision() > 0 {
                return WatchEnd::Compacted;
            }
            if response.canceled() {
                return WatchEnd::Failed(format!("etcd cancelled the watch: {}", response.cancel_reason()));
            }
            if response.created() {
                debug!(from, "watching etcd");
                self.set_health(true, None);
                backoff.reset();
            }
            let events = response.events();
            if events.is_empty() {
                // A progress notification: every change up to its revision has been sent.
                if !response.created()
                    && let Some(header) = response.header()
                {
                    *resume_at = Some(resume_at.unwrap_or(0).max(header.revision() + 1));
                }
                continue;
            }
            let mut hub = self.hub.lock();
            let mut broken = self.broken.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            for event in events {
                let Some(kv) = event.kv() else { continue };
                *resume_at = Some(resume_at.unwrap_or(0).max(kv.mod_revision() + 1));
                let Some(ns) = self.namespace_of(kv.key()) else { continue };
                match event.event_type() {
                    EventType::Put => {
                        if let Some(value) = self.parse_value(&ns, kv, &mut broken) {
                            hub.set(&ns, Some(value));
                        }
                    }
                    EventType::Delete => {
                        broken.remove(&ns);
                        hub.set(&ns, None);
                    }
                }
            }
            self.parse_failures.set_invalid(broken.len());
        }
    }

    /// The value of a namespace key, or `None` (reported once per bad value) if it does not
    /// parse.
    fn parse_value(
        &self,
        ns: &Namespace,
        kv: &KeyValue,
        broken: &mut HashMap<Namespace, i64>,
    ) -> Option<VersionedDtab> {
        match parse_stored(kv.value()) {
            Ok(dtab) => {
                if broken.remove(ns).is_some() {
                    info!(namespace = %ns, "etcd value parses again");
                }
                Some(VersionedDtab { version: revision_version(kv.mod_revision()), dtab })
            }
            Err(error) => {
                let first_report = broken.insert(ns.clone(), kv.mod_revision()) != Some(kv.mod_revision());
                if first_report {
                    warn!(namespace = %ns, revision = kv.mod_revision(), %error, "etcd value does not parse; keeping its last good dtab");
                    // The gauge first, so that whoever sees the failure counted sees it in force.
                    self.parse_failures.set_invalid(broken.len());
                    self.parse_failures.record_failure();
                }
                None
            }
        }
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdShared").field("endpoints", &self.endpoints).field("prefix", &self.prefix).finish()
    }
}

/// Exponential backoff between reconnection attempts, from 50 ms up to a maximum, jittered
/// so that a fleet of namers that lost etcd together does not reconnect in lock step.
#[derive(Debug)]
struct Backoff(waymark_random::Attempts);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(50);

    fn new(max: Duration) -> Self {
        Backoff(waymark_random::Backoff::new(Backoff::FIRST, max).attempts())
    }

    fn reset(&mut self) {
        self.0.reset();
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.0.next_delay()).await;
    }
}

/// The namespace a key belongs to, if it is a namespace key (not a history key).
fn namespace_of(prefix: &str, key: &[u8]) -> Option<Namespace> {
    let rest = key.strip_prefix(prefix.as_bytes())?;
    std::str::from_utf8(rest).ok()?.parse().ok()
}

/// The revision a compare-and-swap expects. A version that is not a positive revision
/// matches nothing (a missing key has mod_revision 0, which must not count as a match).
fn expected_revision(expected: &Version) -> i64 {
    expected.as_text().and_then(|t| t.parse::<i64>().ok()).filter(|&r| r > 0).unwrap_or(-1)
}

/// Why a compare-and-swap transaction whose failure branch counted the key did not write.
fn not_written(ns: &Namespace, response: &TxnResponse) -> StoreError {
    let exists = response.op_responses().iter().any(|r| matches!(r, TxnOpResponse::Get(g) if g.count() > 0));
    if exists { StoreError::Conflict } else { StoreError::NotFound(ns.clone()) }
}

/// How many history values one round trip of a history page fetches.
const HISTORY_PAGE_BATCH: usize = 8;

fn revision_version(revision: i64) -> Version {
    Version::from_bytes(revision.to_string())
}

fn txn_revision(response: &TxnResponse) -> i64 {
    response.header().map_or(0, |h| h.revision())
}

/// The cause inside a store error, without the variant's prefix.
fn cause_text(e: &StoreError) -> String {
    match e {
        StoreError::Invalid(cause) | StoreError::Unavailable(cause) => cause.clone(),
        other => other.to_string(),
    }
}

/// A one-line cause for an etcd client error. gRPC failures are described by their status
/// message and the innermost error under it, which names the real problem (such as
/// "Connection refused"), leaving out the layers of transport types in between.
fn cause_of(e: &etcd_client::Error) -> String {
    fn innermost(e: &(dyn std::error::Error + 'static)) -> Option<String> {
        let mut inner = e.source()?;
        while let Some(source) = inner.source() {
            inner = source;
        }
        Some(inner.to_string())
    }
    match e {
        etcd_client::Error::GRpcStatus(status) => match innermost(status) {
            Some(root) if !status.message().contains(&root) => format!("{}: {root}", status.message()),
            _ => status.message().to_string(),
        },
        etcd_client::Error::TransportError(transport) => match innermost(transport) {
            Some(root) => format!("{transport}: {root}"),
            None => transport.to_string(),
        },
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_keys_and_history_keys_are_told_apart() {
        let ns: Namespace = "web".parse().unwrap();
        assert_eq!(namespace_of(DEFAULT_PREFIX, b"/waymark/dtabs/web"), Some(ns));
        assert_eq!(namespace_of(DEFAULT_PREFIX, b"/waymark/dtabs/web/history/00012-ab"), None);
        assert_eq!(namespace_of(DEFAULT_PREFIX, b"/other/web"), None);
        assert_eq!(namespace_of(DEFAULT_PREFIX, b"/waymark/dtabs/"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_up_to_its_maximum_with_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(300));
        let start = tokio::time::Instant::now();
        for _ in 0..5 {
            backoff.wait().await;
        }
        // Each wait lies between half and all of 50, 100, 200, 300, 300.
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(475) && elapsed <= Duration::from_millis(950), "{elapsed:?}");
        backoff.reset();
        assert_eq!(backoff.0.failures(), 0);
    }
}
