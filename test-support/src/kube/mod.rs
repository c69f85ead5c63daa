//! A fake Kubernetes API server: a real HTTP server on loopback that behaves as the API server
//! documents (discovery, CRUD with one global resourceVersion, optimistic concurrency,
//! selectors, pagination over consistent snapshots, watches with replay, bookmarks and 410
//! after compaction, patches of every type including server-side apply, the status
//! subresource, custom resources, TokenReview and access reviews), for the real `kube` client
//! and the real `kubectl`.
//!
//! It runs on its own threads, so one server can serve every test of a binary
//! ([`FakeApiServer::shared`]) whatever runtime each test uses; tests keep apart by namespace.
//! Tests that break things for everyone (stop, compact) start their own
//! ([`FakeApiServer::start`]); that takes milliseconds.
//!
//! What it does not do: run controllers (no scheduling, no endpoints from services, no pod
//! lifecycle; deletion is immediate unless finalizers hold it), admission webhooks, protobuf
//! beyond the request bodies kubectl's typed clients send, Table output (clients fall back to
//! JSON), or the `pattern`/`format` keywords of CRD schemas.

mod apply;
mod auth;
mod crd;
mod discovery;
mod handler;
mod kinds;
mod patch;
mod protobuf;
mod schema;
mod selector;
mod server;
mod status;
mod store;
mod validation;
mod watch;

pub use auth::{API_SERVER_AUDIENCE, AccessRule, TokenUser};

use std::collections::{BTreeMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use base64::Engine as _;
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::broadcast;

use self::auth::Auth;
use self::handler::RequestInfo;
use self::server::Listening;
use self::store::{FieldValidation, ObjKey, State, WriteCtx};
use crate::TestCert;

/// The environment variable that names the kubectl binary when it is not `kubectl` on `PATH`.
pub const KUBECTL_BINARY_ENV: &str = "WAYMARK_KUBECTL";

/// How many requests the log keeps.
const LOG_LIMIT: usize = 100_000;

/// Options for [`FakeApiServer::builder`].
#[derive(Debug, Clone)]
pub struct FakeApiServerBuilder {
    /// The server's certificate and the CA that signed it.
    tls: Option<(TestCert, String)>,
    require_token: bool,
    bookmark_interval: Duration,
    history_limit: usize,
}

/// The running fake. Dropping it stops it.
#[derive(Debug)]
pub struct FakeApiServer {
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
    stop_runtime: Option<tokio::sync::oneshot::Sender<()>>,
    listening: Mutex<Option<Listening>>,
    addr: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    tls_ca_pem: Option<String>,
    dir: TempDir,
    kubeconfig: PathBuf,
}

/// One request the fake served, for tests to inspect.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The URL path.
    pub path: String,
    /// The raw query string.
    pub query: String,
    /// The `User-Agent` header.
    pub user_agent: Option<String>,
    /// The `Content-Type` header.
    pub content_type: Option<String>,
    /// The authenticated user ("" when refused).
    pub user: String,
    /// The HTTP status answered (200 for a watch, whatever it streamed).
    pub status: u16,
    /// Whether it was a watch.
    pub watch: bool,
}

/// Selects requests, for injected failures and closing watches; `None` matches anything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestFilter {
    /// HTTP method.
    pub method: Option<String>,
    /// A substring of the path.
    pub path_contains: Option<String>,
    /// Watches only (`true`) or everything but watches (`false`).
    pub watch: Option<bool>,
    /// The namespace in the path.
    pub namespace: Option<String>,
}

/// What a kubeconfig written by [`FakeApiServer::write_kubeconfig`] says.
#[derive(Debug, Clone, Default)]
pub struct KubeconfigOptions {
    /// The context's default namespace.
    pub namespace: Option<String>,
    /// A bearer token for the user.
    pub token: Option<String>,
}

#[derive(Debug)]
struct Fault {
    remaining: usize,
    status: u16,
    filter: RequestFilter,
}

#[derive(Debug, Clone)]
struct Options {
    bookmark_interval: Duration,
}

/// State shared by the listener, the handlers and the test's handle.
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
    auth: Mutex<Auth>,
    faults: Mutex<Vec<Fault>>,
    log: Mutex<VecDeque<LoggedRequest>>,
    close_tx: broadcast::Sender<RequestFilter>,
    watches: Mutex<BTreeMap<u64, RequestInfo>>,
    next_watch: AtomicU64,
    options: Options,
    address: Mutex<String>,
}

/// Keeps a watch in the open-watch table while it runs.
#[derive(Debug)]
pub(crate) struct WatchRegistration {
    shared: Arc<Shared>,
    id: u64,
}

impl Shared {
    fn take_fault(&self, info: &RequestInfo) -> Option<u16> {
        let mut faults = self.faults.lock().expect("faults lock");
        let fault = faults.iter_mut().find(|f| f.remaining > 0 && info.matches(&f.filter))?;
        fault.remaining -= 1;
        let status = fault.status;
        faults.retain(|f| f.remaining > 0);
        Some(status)
    }

    fn log(&self, entry: LoggedRequest) {
        let mut log = self.log.lock().expect("log lock");
        if log.len() >= LOG_LIMIT {
            log.pop_front();
        }
        log.push_back(entry);
    }

    fn server_address(&self) -> String {
        self.address.lock().expect("address lock").clone()
    }

    fn register_watch(self: &Arc<Self>, info: RequestInfo) -> WatchRegistration {
        let id = self.next_watch.fetch_add(1, Ordering::Relaxed);
        self.watches.lock().expect("watches lock").insert(id, info);
        WatchRegistration { shared: self.clone(), id }
    }
}

impl Drop for WatchRegistration {
    fn drop(&mut self) {
        self.shared.watches.lock().expect("watches lock").remove(&self.id);
    }
}

impl Default for FakeApiServerBuilder {
    fn default() -> Self {
        FakeApiServerBuilder {
            tls: None,
            require_token: false,
            bookmark_interval: Duration::from_secs(5),
            history_limit: 200_000,
        }
    }
}

impl FakeApiServerBuilder {
    /// Serve HTTPS with this certificate (it should name 127.0.0.1); the CA goes into
    /// kubeconfigs.
    pub fn tls(mut self, cert: TestCert, ca_pem: &str) -> Self {
        self.tls = Some((cert, ca_pem.to_string()));
        self
    }

    /// Refuse (401) requests without a registered bearer token.
    pub fn require_token(mut self) -> Self {
        self.require_token = true;
        self
    }

    /// How often an idle watch that asked for bookmarks gets one (default 5 s).
    pub fn bookmark_interval(mut self, interval: Duration) -> Self {
        self.bookmark_interval = interval;
        self
    }

    /// How many changes the history keeps before it compacts on its own (default 200,000).
    pub fn history_limit(mut self, limit: usize) -> Self {
        self.history_limit = limit.max(1);
        self
    }

    /// Starts the server on a free loopback port.
    pub fn start(self) -> anyhow::Result<FakeApiServer> {
        let tls = self.tls.as_ref().map(|(cert, _)| server::tls_config(cert)).transpose()?;
        let tls_ca_pem = self.tls.map(|(_, ca)| ca);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fake-kube-api")
            .enable_all()
            .build()
            .context("starting the fake API server's runtime")?;
        let handle = runtime.handle().clone();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("fake-kube-api".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stop_rx.await;
                });
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .context("spawning the fake API server's thread")?;
        let mut auth = Auth::default();
        auth.require_token = self.require_token;
        let (close_tx, _) = broadcast::channel(64);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(self.history_limit)),
            auth: Mutex::new(auth),
            faults: Mutex::new(Vec::new()),
            log: Mutex::new(VecDeque::new()),
            close_tx,
            watches: Mutex::new(BTreeMap::new()),
            next_watch: AtomicU64::new(0),
            options: Options { bookmark_interval: self.bookmark_interval },
            address: Mutex::new(String::new()),
        });
        let (listening, addr) = server::listen(&handle, shared.clone(), (Ipv4Addr::LOCALHOST, 0).into(), tls.clone())?;
        *shared.address.lock().expect("address lock") = addr.to_string();
        let dir = tempfile::Builder::new().prefix("fake-kube-").tempdir().context("a directory for kubeconfigs")?;
        let kubeconfig = dir.path().join("kubeconfig");
        let server = FakeApiServer {
            shared,
            runtime: handle,
            stop_runtime: Some(stop_tx),
            listening: Mutex::new(Some(listening)),
            addr,
            tls,
            tls_ca_pem,
            dir,
            kubeconfig,
        };
        server.write_kubeconfig(&server.kubeconfig, &KubeconfigOptions::default())?;
        Ok(server)
    }
}

impl FakeApiServer {
    /// Options for a new server.
    pub fn builder() -> FakeApiServerBuilder {
        FakeApiServerBuilder::default()
    }

    /// A new plain-HTTP server with default options.
    pub fn start() -> anyhow::Result<FakeApiServer> {
        FakeApiServer::builder().start()
    }

    /// The server every test of this binary shares, started on first use.
    pub fn shared() -> &'static FakeApiServer {
        static SHARED: OnceLock<FakeApiServer> = OnceLock::new();
        SHARED.get_or_init(|| FakeApiServer::start().expect("starting the shared fake API server"))
    }

    /// `http://127.0.0.1:PORT` (or https).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The loopback address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kubeconfig for this server (context namespace `default`, no token).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// Writes a kubeconfig for this server to `path`.
    pub fn write_kubeconfig(&self, path: &Path, options: &KubeconfigOptions) -> anyhow::Result<()> {
        let mut cluster = format!("    server: {}\n", self.url());
        if let Some(ca) = &self.tls_ca_pem {
            let data = base64::engine::general_purpose::STANDARD.encode(ca);
            cluster.push_str(&format!("    certificate-authority-data: {data}\n"));
        }
        let namespace = options.namespace.as_deref().map(|ns| format!("    namespace: {ns}\n")).unwrap_or_default();
        let user = match &options.token {
            Some(token) => format!("  user:\n    token: {token}\n"),
            None => "  user: {}\n".to_string(),
        };
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n{cluster}contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n{namespace}current-context: fake\npreferences: {{}}\nusers:\n- name: fake\n{user}"
        );
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// `kubectl` with this server's kubeconfig and a discovery cache of its own.
    pub fn kubectl(&self) -> Command {
        let binary = std::env::var_os(KUBECTL_BINARY_ENV).unwrap_or_else(|| "kubectl".into());
        let mut command = Command::new(binary);
        command
            .env("KUBECONFIG", &self.kubeconfig)
            .env("KUBECACHEDIR", self.dir.path().join("cache"))
            .env_remove("KUBERNETES_SERVICE_HOST");
        command
    }

    fn kind_of(&self, object: &Value) -> anyhow::Result<(Arc<kinds::Kind>, String)> {
        let api_version = object["apiVersion"].as_str().ok_or_else(|| anyhow!("the object has no apiVersion"))?;
        let kind = object["kind"].as_str().ok_or_else(|| anyhow!("the object has no kind"))?;
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let state = self.shared.state.lock().expect("state lock");
        let found = state
            .registry
            .by_kind(group, kind)
            .filter(|k| k.version(version).is_some())
            .cloned()
            .ok_or_else(|| anyhow!("the fake does not serve {kind} in {api_version}"))?;
        Ok((found, version.to_string()))
    }

    fn seed_ctx(&self, object: &Value, keep_status: bool) -> anyhow::Result<WriteCtx> {
        let (kind, version) = self.kind_of(object)?;
        let namespace = if kind.namespaced {
            Some(object["metadata"]["namespace"].as_str().unwrap_or("default").to_string())
        } else {
            None
        };
        Ok(WriteCtx {
            kind,
            version,
            namespace,
            dry_run: false,
            manager: "fake-api-server-test".into(),
            field_validation: FieldValidation::Strict,
            keep_status,
        })
    }

    /// Creates an object as a POST would (status reset where the type's strategy does);
    /// returns it as stored.
    pub fn create(&self, object: Value) -> anyhow::Result<Value> {
        let ctx = self.seed_ctx(&object, false)?;
        let written =
            self.shared.state.lock().expect("state lock").create(&ctx, object).map_err(|e| anyhow!("{}", e.message))?;
        Ok(written.object)
    }

    /// Creates or replaces an object including its status, as a controller would leave it.
    pub fn put(&self, object: Value) -> anyhow::Result<Value> {
        let ctx = self.seed_ctx(&object, true)?;
        let name = object["metadata"]["name"].as_str().ok_or_else(|| anyhow!("the object has no name"))?.to_string();
        let mut state = self.shared.state.lock().expect("state lock");
        let key = ObjKey {
            group: ctx.kind.group.clone(),
            resource: ctx.kind.plural.clone(),
            namespace: ctx.namespace.clone().unwrap_or_default(),
            name: name.clone(),
        };
        let error = |e: status::ApiError| anyhow!("{}", e.message);
        if state.object(&key).is_none() {
            return state.create(&ctx, object).map(|w| w.object).map_err(error);
        }
        let mut body = object;
        if let Some(meta) = body["metadata"].as_object_mut() {
            meta.remove("resourceVersion");
        }
        let mut ctx = ctx;
        ctx.kind = Arc::new(kinds::Kind { unconditional_update: true, ..(*ctx.kind).clone() });
        let main = state.update(&ctx, &name, body.clone(), false).map_err(error)?;
        if ctx.kind.has_status(&ctx.version) {
            return state.update(&ctx, &name, body, true).map(|w| w.object).map_err(error);
        }
        Ok(main.object)
    }

    /// An object as stored, if it exists.
    pub fn get(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let probe = serde_json::json!({"apiVersion": api_version, "kind": kind});
        let (found, version) = self.kind_of(&probe).ok()?;
        let state = self.shared.state.lock().expect("state lock");
        let key = ObjKey {
            group: found.group.clone(),
            resource: found.plural.clone(),
            namespace: if found.namespaced { namespace.unwrap_or("default").to_string() } else { String::new() },
            name: name.to_string(),
        };
        state.object(&key).map(|o| store::served(o, &found, &version))
    }

    /// The newest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.state.lock().expect("state lock").head()
    }

    /// Makes `token` authenticate as `user` (requests and TokenReviews).
    pub fn register_token(&self, token: &str, user: TokenUser) {
        self.shared.auth.lock().expect("auth lock").register(token, user);
    }

    /// Denies what `rule` matches: requests get 403, access reviews say not allowed.
    pub fn deny(&self, rule: AccessRule) {
        self.shared.auth.lock().expect("auth lock").deny(rule);
    }

    /// Removes every denial.
    pub fn allow_all(&self) {
        self.shared.auth.lock().expect("auth lock").allow_all();
    }

    /// Ends every open watch (the response stream ends cleanly, as on a timeout).
    pub fn close_watches(&self) {
        self.close_watches_matching(RequestFilter::default());
    }

    /// Ends the open watches `filter` selects.
    pub fn close_watches_matching(&self, filter: RequestFilter) {
        let _ = self.shared.close_tx.send(filter);
    }

    /// How many watches are open (of those `filter` selects).
    pub fn open_watches(&self, filter: &RequestFilter) -> usize {
        self.shared.watches.lock().expect("watches lock").values().filter(|w| w.matches(filter)).count()
    }

    /// Answers the next `count` requests with `status` (a Status body with the usual reason).
    pub fn fail_next(&self, count: usize, status: u16) {
        self.fail_next_matching(count, status, RequestFilter::default());
    }

    /// Answers the next `count` requests that `filter` selects with `status`.
    pub fn fail_next_matching(&self, count: usize, status: u16, filter: RequestFilter) {
        self.shared.faults.lock().expect("faults lock").push(Fault { remaining: count, status, filter });
    }

    /// Forgets every injected failure not yet used.
    pub fn clear_faults(&self) {
        self.shared.faults.lock().expect("faults lock").clear();
    }

    /// Compacts the history up to now: a watch or an Exact list from an older
    /// resourceVersion gets 410 Expired, as do continue tokens taken before.
    pub fn compact(&self) {
        self.shared.state.lock().expect("state lock").compact();
    }

    /// Closes the listener and every connection; the state stays.
    pub fn stop(&self) {
        if let Some(listening) = self.listening.lock().expect("listener lock").take() {
            listening.stop();
        }
    }

    /// Listens again on the same port with the same state.
    pub fn restart(&self) -> anyhow::Result<()> {
        let mut listening = self.listening.lock().expect("listener lock");
        if let Some(old) = listening.take() {
            old.stop();
        }
        let (new, _) = server::listen(&self.runtime, self.shared.clone(), self.addr, self.tls.clone())?;
        *listening = Some(new);
        Ok(())
    }

    /// The requests served so far (the last 100,000).
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.shared.log.lock().expect("log lock").iter().cloned().collect()
    }

    /// Forgets the requests served so far.
    pub fn clear_requests(&self) {
        self.shared.log.lock().expect("log lock").clear();
    }
}

impl LoggedRequest {
    /// A query parameter, decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        handler::Query::parse(&self.query).get(name).map(str::to_string)
    }
}

impl RequestFilter {
    /// Watches only.
    pub fn watches() -> RequestFilter {
        RequestFilter { watch: Some(true), ..RequestFilter::default() }
    }

    /// Only requests whose path names this namespace.
    pub fn in_namespace(mut self, namespace: &str) -> RequestFilter {
        self.namespace = Some(namespace.into());
        self
    }

    /// Only requests whose path contains `text`.
    pub fn path_contains(mut self, text: &str) -> RequestFilter {
        self.path_contains = Some(text.into());
        self
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop();
        if let Some(stop) = self.stop_runtime.take() {
            let _ = stop.send(());
        }
    }
}
