//! `storage: {kind: k8s, namespace: NS}`, and namerd's `io.l5d.k8s` storage, which loads too.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use waymark_store::{DEFAULT_HISTORY_LIMIT, StoreLimits};

/// The Kubernetes store's settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K8sStoreConfig {
    /// The Kubernetes namespace holding the `DTab` objects and their histories.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// How many history entries each dtab namespace keeps (at least 1; fewer when its dtabs
    /// are so large that they do not fit in one 1 MiB object).
    #[serde(default = "default_history_limit")]
    pub history_limit: usize,
    /// How long one request to the API server may take before it fails as unavailable, in
    /// milliseconds.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// A kubeconfig file, instead of searching as kubectl does (the pod's service account,
    /// then `$KUBECONFIG`, then `~/.kube/config`).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// A kubeconfig context other than the current one.
    #[serde(default)]
    pub context: Option<String>,
    /// The host of a `kubectl proxy` (plain HTTP), as namerd's `host`.
    #[serde(default)]
    pub host: Option<String>,
    /// The port of that proxy (namerd's default, 8001, when only `host` is given).
    #[serde(default)]
    pub port: Option<u16>,
    /// What the store may hold: `max_namespaces` and `max_stored_bytes`.
    #[serde(default)]
    pub limits: StoreLimits,
}

fn default_namespace() -> String {
    "default".to_string()
}

fn default_history_limit() -> usize {
    DEFAULT_HISTORY_LIMIT
}

fn default_request_timeout_ms() -> u64 {
    5_000
}

/// namerd's default `kubectl proxy` port.
const KUBECTL_PROXY_PORT: u16 = 8001;

impl Default for K8sStoreConfig {
    fn default() -> Self {
        K8sStoreConfig {
            namespace: default_namespace(),
            history_limit: default_history_limit(),
            request_timeout_ms: default_request_timeout_ms(),
            kubeconfig: None,
            context: None,
            host: None,
            port: None,
            limits: StoreLimits::default(),
        }
    }
}

impl K8sStoreConfig {
    /// Every problem, as (key, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut add = |key: &str, message: &str| problems.push((key.to_string(), message.to_string()));
        let ns = &self.namespace;
        let valid_ns = !ns.is_empty()
            && ns.len() <= 63
            && ns.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !ns.starts_with('-')
            && !ns.ends_with('-');
        if !valid_ns {
            add("namespace", "must be a Kubernetes namespace name (lower-case letters, digits and '-')");
        }
        if self.history_limit == 0 {
            add("history_limit", "must be at least 1");
        }
        if self.request_timeout_ms == 0 {
            add("request_timeout_ms", "must be at least 1");
        }
        if (self.host.is_some() || self.port.is_some()) && (self.kubeconfig.is_some() || self.context.is_some()) {
            add("host", "a kubectl proxy (host, port) and a kubeconfig (kubeconfig, context) exclude each other");
        }
        if self.host.as_deref().is_some_and(str::is_empty) {
            add("host", "may not be empty");
        }
        for (key, message) in self.limits.problems() {
            add(key, message);
        }
        problems
    }

    /// The request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// The client these settings describe.
    pub async fn client(&self) -> Result<kube::Client, ClientError> {
        if self.host.is_some() || self.port.is_some() {
            let host = self.host.as_deref().unwrap_or("localhost");
            let host = match host.parse::<std::net::Ipv6Addr>() {
                Ok(ip) => format!("[{ip}]"),
                Err(_) => host.to_string(),
            };
            let url = format!("http://{host}:{}", self.port.unwrap_or(KUBECTL_PROXY_PORT));
            let uri = url.parse().map_err(|_| ClientError::ProxyUrl(url))?;
            return kube::Client::try_from(kube::Config::new(uri)).map_err(ClientError::Proxy);
        }
        let options = waymark_k8s::ClientOptions { kubeconfig: self.kubeconfig.clone(), context: self.context.clone() };
        let (client, source) = waymark_k8s::client::connect(&options).await?;
        tracing::info!(source = %source, namespace = %self.namespace, "Kubernetes dtab store configured");
        Ok(client)
    }
}

/// Why the store could not get a Kubernetes client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The client configuration could not be found or used.
    #[error(transparent)]
    Config(#[from] waymark_k8s::ClientError),
    /// `host` and `port` do not make a URL.
    #[error("{0:?} is not a URL")]
    ProxyUrl(String),
    /// The client for a `kubectl proxy` could not be built.
    #[error("building the client for the kubectl proxy")]
    Proxy(#[source] kube::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namerd_storage_settings_load() {
        let config: K8sStoreConfig =
            serde_json::from_value(serde_json::json!({"host": "localhost", "port": 8001, "namespace": "linkerd"}))
                .unwrap();
        assert_eq!((config.namespace.as_str(), config.port), ("linkerd", Some(8001)));
        assert!(config.problems().is_empty());
        let bad: K8sStoreConfig =
            serde_json::from_value(serde_json::json!({"namespace": "Not_Valid", "history_limit": 0})).unwrap();
        let keys: Vec<String> = bad.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["namespace", "history_limit"]);
    }
}
