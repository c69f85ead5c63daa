//! Store configuration: which backend, and how to reach it. The namer embeds [`StoreConfig`]
//! under its `storage:` key.
//!
//! ```yaml
//! storage:
//!   kind: etcd
//!   endpoints: ["https://etcd-0:2379", "https://etcd-1:2379"]
//!   tls: { ca_cert_path: /etc/waymark/etcd-ca.pem }
//!   user: waymark
//!   password_file: /etc/waymark/etcd-password
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use waymark_dtab::Dtab;

use crate::error::StoreError;
use crate::etcd::{DEFAULT_PREFIX, EtcdStore, EtcdStoreOptions, EtcdTls};
use crate::file::{FileStore, FileStoreOptions};
use crate::limits::{LimitedStore, StoreLimits};
use crate::memory::{DEFAULT_HISTORY_LIMIT, MemoryStore};
use crate::metrics::{InstrumentedStore, ParseFailureMetrics, StoreMetrics};
use crate::namespace::Namespace;
use crate::store::{ChangeMeta, DtabStore};

/// Which store keeps the dtabs, chosen by `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", deny_unknown_fields)]
// Read once at start-up, so the size of the etcd variant costs nothing worth a `Box`.
#[allow(clippy::large_enum_variant)]
pub enum StoreConfig {
    /// In this process only; lost on exit. For tests and demos.
    #[serde(rename = "memory", alias = "io.l5d.inMemory")]
    Memory(MemoryConfig),
    /// One file per namespace in a directory. For a laptop or a single machine.
    #[serde(rename = "file")]
    File(FileConfig),
    /// etcd v3. For a fleet of namers.
    #[serde(rename = "etcd")]
    Etcd(EtcdConfig),
}

/// `kind: memory` (or namerd's `io.l5d.inMemory`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// Namespaces to start with, as namespace name to dtab text.
    #[serde(default)]
    pub namespaces: BTreeMap<String, String>,
    /// How many history entries each namespace keeps (at least 1).
    #[serde(default = "default_history_limit")]
    pub history_limit: usize,
    /// What the store may hold: `max_namespaces` and `max_stored_bytes` (of dtabs in
    /// service); a write past either is refused.
    #[serde(default)]
    pub limits: StoreLimits,
}

/// `kind: file`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The directory holding one `<namespace>.dtab` file per namespace. A relative path is
    /// taken from the process's working directory.
    pub dir: PathBuf,
    /// Create `dir` if it does not exist, instead of failing.
    #[serde(default)]
    pub create_dir: bool,
    /// How many history entries each namespace keeps (at least 1).
    #[serde(default = "default_history_limit")]
    pub history_limit: usize,
    /// How often to re-read the directory even without file-system events, in milliseconds.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Listen for file-system events (inotify) to see changes at once. Turn off on file
    /// systems that do not deliver them; polling still sees every change.
    #[serde(default = "default_true")]
    pub fs_events: bool,
    /// What the store may hold: `max_namespaces` and `max_stored_bytes` (of dtabs in
    /// service); a write past either is refused.
    #[serde(default)]
    pub limits: StoreLimits,
}

/// `kind: etcd`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// etcd client URLs: `http://host:port`, or `https://host:port` with `tls`.
    #[serde(default = "default_endpoints")]
    pub endpoints: Vec<String>,
    /// The key prefix under which dtabs live; must end with `/`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// TLS to etcd; required for `https` endpoints.
    #[serde(default)]
    pub tls: Option<EtcdTlsConfig>,
    /// User for etcd authentication; needs `password` or `password_file`.
    #[serde(default)]
    pub user: Option<String>,
    /// Password for `user`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// File holding the password for `user` (trailing newline ignored), instead of `password`.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// How long to wait for a connection, in milliseconds.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// How long one request may take before it fails as unavailable, in milliseconds.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// How often to ping an idle connection to detect a dead one, in milliseconds.
    #[serde(default = "default_keep_alive_interval_ms")]
    pub keep_alive_interval_ms: u64,
    /// The longest pause between reconnection attempts, in milliseconds.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// How many history entries each namespace keeps (at least 1).
    #[serde(default = "default_history_limit")]
    pub history_limit: usize,
    /// What the store may hold: `max_namespaces` and `max_stored_bytes` (of dtabs in
    /// service); a write past either is refused.
    #[serde(default)]
    pub limits: StoreLimits,
}

/// TLS settings for etcd.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdTlsConfig {
    /// PEM file with the CA certificate(s) that sign etcd's server certificates.
    pub ca_cert_path: PathBuf,
    /// PEM file with a client certificate, for etcd's client-certificate auth; needs `key_path`.
    #[serde(default)]
    pub cert_path: Option<PathBuf>,
    /// PEM file with the client certificate's private key; needs `cert_path`.
    #[serde(default)]
    pub key_path: Option<PathBuf>,
    /// The name to expect in etcd's certificate, when it differs from the endpoint host.
    #[serde(default)]
    pub server_name: Option<String>,
}

/// A configuration value kept out of logs and debug output.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

/// One problem found by [`StoreConfig::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Where, as a field path relative to the store configuration (`endpoints[1]`).
    pub path: String,
    /// What is wrong, and what would be right.
    pub message: String,
}

/// Every problem in a store configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigProblem>);

impl Default for StoreConfig {
    /// An empty memory store.
    fn default() -> Self {
        StoreConfig::Memory(MemoryConfig::default())
    }
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            namespaces: BTreeMap::new(),
            history_limit: DEFAULT_HISTORY_LIMIT,
            limits: StoreLimits::default(),
        }
    }
}

impl StoreConfig {
    /// The backend's name, as written in `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreConfig::Memory(_) => "memory",
            StoreConfig::File(_) => "file",
            StoreConfig::Etcd(_) => "etcd",
        }
    }

    /// What the store may hold.
    pub fn limits(&self) -> StoreLimits {
        match self {
            StoreConfig::Memory(c) => c.limits,
            StoreConfig::File(c) => c.limits,
            StoreConfig::Etcd(c) => c.limits,
        }
    }

    /// Checks everything that can be checked without I/O, and reports every problem at once.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut problems = Problems::default();
        match self {
            StoreConfig::Memory(c) => {
                for (name, text) in &c.namespaces {
                    let path = format!("namespaces.{name}");
                    if let Err(e) = name.parse::<Namespace>() {
                        problems.add(&path, e.to_string());
                    }
                    if let Err(e) = text.parse::<Dtab>() {
                        problems.add(&path, format!("invalid dtab: {e}"));
                    }
                }
                problems.history_limit(c.history_limit);
            }
            StoreConfig::File(c) => {
                if c.dir.as_os_str().is_empty() {
                    problems.add("dir", "must name a directory");
                }
                if c.poll_interval_ms == 0 {
                    problems.add("poll_interval_ms", "must be at least 1");
                }
                problems.history_limit(c.history_limit);
            }
            StoreConfig::Etcd(c) => c.check(&mut problems),
        }
        for (path, message) in self.limits().problems() {
            problems.add(path, message);
        }
        problems.into_result()
    }

    /// Validates the configuration, then opens the store it describes.
    pub async fn build(&self) -> Result<Arc<dyn DtabStore>, StoreError> {
        self.build_counting(ParseFailureMetrics::default()).await
    }

    /// Like [`StoreConfig::build`], with every operation and parse failure recorded in
    /// `metrics`.
    pub async fn build_instrumented(&self, metrics: &StoreMetrics) -> Result<Arc<dyn DtabStore>, StoreError> {
        let store = self.build_counting(metrics.parse_failures().clone()).await?;
        Ok(Arc::new(InstrumentedStore::new(store, metrics.clone())))
    }

    async fn build_counting(&self, parse_failures: ParseFailureMetrics) -> Result<Arc<dyn DtabStore>, StoreError> {
        let store = self.build_backend(parse_failures).await?;
        Ok(Arc::new(LimitedStore::new(store, self.limits())))
    }

    async fn build_backend(&self, parse_failures: ParseFailureMetrics) -> Result<Arc<dyn DtabStore>, StoreError> {
        self.validate().map_err(|e| StoreError::Invalid(format!("{} store configuration: {e}", self.kind())))?;
        match self {
            StoreConfig::Memory(c) => {
                let store = MemoryStore::with_history_limit(c.history_limit);
                let meta = ChangeMeta { author: None, message: Some("loaded from configuration".to_string()) };
                for (name, text) in &c.namespaces {
                    let ns: Namespace = name.parse()?;
                    let dtab: Dtab = text.parse().map_err(|e| StoreError::Invalid(format!("{e}")))?;
                    store.put(&ns, &dtab, &meta).await?;
                }
                Ok(Arc::new(store))
            }
            StoreConfig::File(c) => {
                let options = FileStoreOptions {
                    dir: c.dir.clone(),
                    history_limit: c.history_limit,
                    poll_interval: Duration::from_millis(c.poll_interval_ms),
                    fs_events: c.fs_events,
                    create_dir: c.create_dir,
                    parse_failures,
                };
                Ok(Arc::new(FileStore::open(options).await?))
            }
            StoreConfig::Etcd(c) => Ok(Arc::new(EtcdStore::connect(c.options(parse_failures)?).await?)),
        }
    }
}

impl EtcdConfig {
    fn check(&self, problems: &mut Problems) {
        if self.endpoints.is_empty() {
            problems.add("endpoints", "must list at least one etcd client URL");
        }
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let path = format!("endpoints[{i}]");
            let (scheme, rest) = endpoint.split_once("://").unwrap_or(("", endpoint));
            if rest.is_empty() || rest.contains(char::is_whitespace) || rest.contains('/') {
                problems.add(&path, format!("{endpoint:?} is not a host:port URL such as http://127.0.0.1:2379"));
            }
            match (scheme, &self.tls) {
                ("http", Some(_)) => problems.add(&path, "uses http, but tls is configured: use https"),
                ("https", None) => problems.add(&path, "uses https, which needs tls.ca_cert_path"),
                ("" | "http" | "https", _) => {}
                _ => problems.add(&path, format!("unknown scheme {scheme:?}: use http or https")),
            }
        }
        if self.prefix.is_empty() || !self.prefix.ends_with('/') {
            problems.add("prefix", format!("{:?} must be non-empty and end with '/'", self.prefix));
        }
        match (&self.user, &self.password, &self.password_file) {
            (Some(_), Some(_), Some(_)) => problems.add("password_file", "give password or password_file, not both"),
            (Some(_), None, None) => problems.add("user", "needs password or password_file"),
            (None, Some(_), _) => problems.add("password", "needs user"),
            (None, _, Some(_)) => problems.add("password_file", "needs user"),
            _ => {}
        }
        if let Some(tls) = &self.tls {
            match (&tls.cert_path, &tls.key_path) {
                (Some(_), None) => problems.add("tls.key_path", "needed with tls.cert_path"),
                (None, Some(_)) => problems.add("tls.cert_path", "needed with tls.key_path"),
                _ => {}
            }
        }
        for (name, value) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("keep_alive_interval_ms", self.keep_alive_interval_ms),
            ("max_backoff_ms", self.max_backoff_ms),
        ] {
            if value == 0 {
                problems.add(name, "must be at least 1");
            }
        }
        problems.history_limit(self.history_limit);
    }

    /// The store options, reading the password and TLS files this configuration names.
    fn options(&self, parse_failures: ParseFailureMetrics) -> Result<EtcdStoreOptions, StoreError> {
        let read = |field: &str, path: &PathBuf| {
            std::fs::read(path)
                .map_err(|e| StoreError::Invalid(format!("etcd store configuration: {field}: {}: {e}", path.display())))
        };
        let password = match (&self.password, &self.password_file) {
            (Some(secret), _) => Some(secret.expose().to_string()),
            (None, Some(path)) => {
                let bytes = read("password_file", path)?;
                Some(String::from_utf8_lossy(&bytes).trim_end_matches(['\r', '\n']).to_string())
            }
            (None, None) => None,
        };
        let tls = match &self.tls {
            None => None,
            Some(tls) => Some(EtcdTls {
                ca_pem: read("tls.ca_cert_path", &tls.ca_cert_path)?,
                identity_pem: match (&tls.cert_path, &tls.key_path) {
                    (Some(cert), Some(key)) => Some((read("tls.cert_path", cert)?, read("tls.key_path", key)?)),
                    _ => None,
                },
                server_name: tls.server_name.clone(),
            }),
        };
        Ok(EtcdStoreOptions {
            endpoints: self.endpoints.clone(),
            prefix: self.prefix.clone(),
            history_limit: self.history_limit,
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            keep_alive_interval: Duration::from_millis(self.keep_alive_interval_ms),
            max_backoff: Duration::from_millis(self.max_backoff_ms),
            credentials: self.user.clone().zip(password),
            tls,
            parse_failures,
        })
    }
}

impl Secret {
    /// A secret holding `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            problem.fmt(f)?;
        }
        Ok(())
    }
}

/// Collects validation problems.
#[derive(Debug, Default)]
struct Problems(Vec<ConfigProblem>);

impl Problems {
    fn add(&mut self, path: &str, message: impl Into<String>) {
        self.0.push(ConfigProblem { path: path.to_string(), message: message.into() });
    }

    fn history_limit(&mut self, limit: usize) {
        if limit == 0 {
            self.add("history_limit", "must be at least 1");
        }
    }

    fn into_result(self) -> Result<(), ConfigErrors> {
        if self.0.is_empty() { Ok(()) } else { Err(ConfigErrors(self.0)) }
    }
}

fn default_history_limit() -> usize {
    DEFAULT_HISTORY_LIMIT
}

fn default_poll_interval_ms() -> u64 {
    2000
}

fn default_true() -> bool {
    true
}

fn default_endpoints() -> Vec<String> {
    vec!["http://127.0.0.1:2379".to_string()]
}

fn default_prefix() -> String {
    DEFAULT_PREFIX.to_string()
}

fn default_connect_timeout_ms() -> u64 {
    2000
}

fn default_request_timeout_ms() -> u64 {
    5000
}

fn default_keep_alive_interval_ms() -> u64 {
    10_000
}

fn default_max_backoff_ms() -> u64 {
    5000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<StoreConfig, String> {
        serde_saphyr::from_str(yaml).map_err(|e| e.to_string())
    }

    fn problems(config: &StoreConfig) -> Vec<String> {
        match config.validate() {
            Ok(()) => Vec::new(),
            Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn memory_accepts_namerds_kind_and_namespaces() {
        for kind in ["memory", "io.l5d.inMemory"] {
            let config = parse(&format!("kind: {kind}\nnamespaces:\n  default: /svc => /#/io.l5d.fs\n")).unwrap();
            let StoreConfig::Memory(memory) = &config else { panic!("{config:?}") };
            assert_eq!(memory.namespaces["default"], "/svc => /#/io.l5d.fs");
            assert_eq!(memory.history_limit, DEFAULT_HISTORY_LIMIT);
            assert_eq!(config.kind(), "memory");
            assert_eq!(problems(&config), Vec::<String>::new());
        }
    }

    #[test]
    fn file_fills_in_defaults() {
        let config = parse("kind: file\ndir: dtabs\n").unwrap();
        assert_eq!(
            config,
            StoreConfig::File(FileConfig {
                dir: PathBuf::from("dtabs"),
                create_dir: false,
                history_limit: 100,
                poll_interval_ms: 2000,
                fs_events: true,
                limits: StoreLimits::default(),
            })
        );
    }

    #[test]
    fn etcd_reads_every_field() {
        let yaml = "
kind: etcd
endpoints: [https://etcd-0:2379, etcd-1:2379]
prefix: /mesh/dtabs/
tls: { ca_cert_path: /ca.pem, cert_path: /c.pem, key_path: /k.pem, server_name: etcd }
user: waymark
password: hunter2
connect_timeout_ms: 100
request_timeout_ms: 200
keep_alive_interval_ms: 300
max_backoff_ms: 400
history_limit: 7
";
        let StoreConfig::Etcd(etcd) = parse(yaml).unwrap() else { panic!() };
        assert_eq!(etcd.endpoints, ["https://etcd-0:2379", "etcd-1:2379"]);
        assert_eq!(etcd.prefix, "/mesh/dtabs/");
        let tls = etcd.tls.clone().unwrap();
        assert_eq!(tls.ca_cert_path, PathBuf::from("/ca.pem"));
        assert_eq!(tls.server_name.as_deref(), Some("etcd"));
        assert_eq!(etcd.password.as_ref().map(Secret::expose), Some("hunter2"));
        assert_eq!(
            (etcd.connect_timeout_ms, etcd.request_timeout_ms, etcd.keep_alive_interval_ms, etcd.max_backoff_ms),
            (100, 200, 300, 400)
        );
        assert_eq!(etcd.history_limit, 7);
        assert_eq!(problems(&StoreConfig::Etcd(etcd.clone())), Vec::<String>::new());
        assert!(!format!("{etcd:?}").contains("hunter2"));
    }

    #[test]
    fn etcd_defaults_to_a_local_server() {
        let StoreConfig::Etcd(etcd) = parse("kind: etcd\n").unwrap() else { panic!() };
        assert_eq!(etcd.endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(etcd.prefix, "/waymark/dtabs/");
        assert_eq!((etcd.connect_timeout_ms, etcd.request_timeout_ms), (2000, 5000));
    }

    #[test]
    fn unknown_kinds_and_fields_are_rejected() {
        for (yaml, expected) in [
            ("kind: zookeeper\n", "zookeeper"),
            ("kind: file\ndir: d\npoll_interval: 5\n", "poll_interval"),
            ("kind: etcd\ntls: { ca_cert_path: /ca, ca: x }\n", "ca"),
            ("kind: memory\nexperimental: true\n", "experimental"),
            ("dir: d\n", "kind"),
        ] {
            let error = parse(yaml).unwrap_err();
            assert!(error.contains(expected), "{yaml:?}: {error}");
        }
    }

    #[test]
    fn validation_reports_every_problem_with_its_path() {
        let yaml = "
kind: etcd
endpoints: [http://ok:2379, 'ftp://x:1', 'a b', https://y:1]
prefix: /no-slash
user: u
password_file: /p
password: p
connect_timeout_ms: 0
history_limit: 0
";
        let config = parse(yaml).unwrap();
        assert_eq!(
            problems(&config),
            [
                "endpoints[1]: unknown scheme \"ftp\": use http or https",
                "endpoints[2]: \"a b\" is not a host:port URL such as http://127.0.0.1:2379",
                "endpoints[3]: uses https, which needs tls.ca_cert_path",
                "prefix: \"/no-slash\" must be non-empty and end with '/'",
                "password_file: give password or password_file, not both",
                "connect_timeout_ms: must be at least 1",
                "history_limit: must be at least 1",
            ]
        );

        let memory = parse("kind: memory\nnamespaces:\n  'bad/name': /a=>/b\n  ok: '/a => ('\n").unwrap();
        let found = problems(&memory);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("namespaces.bad/name: invalid namespace name"), "{found:?}");
        assert!(found[1].starts_with("namespaces.ok: invalid dtab"), "{found:?}");

        let file = parse("kind: file\ndir: ''\npoll_interval_ms: 0\nhistory_limit: 0\n").unwrap();
        assert_eq!(problems(&file).len(), 3);

        let etcd = parse("kind: etcd\nendpoints: []\nuser: u\ntls: { ca_cert_path: /ca, cert_path: /c }\n").unwrap();
        assert_eq!(
            problems(&etcd),
            [
                "endpoints: must list at least one etcd client URL",
                "user: needs password or password_file",
                "tls.key_path: needed with tls.cert_path"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn build_refuses_an_invalid_configuration_with_every_problem() {
        let config = parse("kind: file\ndir: ''\nhistory_limit: 0\n").unwrap();
        match config.build().await {
            Err(StoreError::Invalid(msg)) => {
                assert!(msg.contains("dir: must name a directory") && msg.contains("history_limit"), "{msg}");
            }
            other => panic!("expected Invalid, got {:?}", other.map(|_| ())),
        }
    }

    #[tokio::test]
    async fn build_reports_unreadable_tls_files() {
        let config =
            parse("kind: etcd\nendpoints: [https://127.0.0.1:1]\ntls: { ca_cert_path: /nonexistent/ca.pem }\n")
                .unwrap();
        match config.build().await {
            Err(StoreError::Invalid(msg)) => assert!(msg.contains("tls.ca_cert_path: /nonexistent/ca.pem"), "{msg}"),
            other => panic!("expected Invalid, got {:?}", other.map(|_| ())),
        }
    }
}
