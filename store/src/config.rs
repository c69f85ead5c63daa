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
use crate::memory::{DEFAULT_HISTORY_LIMIT, MemoryStore};
use crate::metrics::{InstrumentedStore, ParseFailureMetrics, StoreMetrics};
use crate::namespace::Namespace;
use crate::store::{ChangeMeta, DtabStore};

/// Which store keeps the dtabs, chosen by `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", deny_unknown_fields)]
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
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig { namespaces: BTreeMap::new(), history_limit: default_history_limit() }
    }
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

impl StoreConfig {
    /// The backend's name, as written in `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreConfig::Memory(_) => "memory",
            StoreConfig::File(_) => "file",
            StoreConfig::Etcd(_) => "etcd",
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
