//! The settings of the three Kubernetes namer kinds, with Linkerd 1's key names accepted as
//! aliases so that a namerd configuration carries over.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use waymark_interpreter::ConfigProblem;
use waymark_k8s::ClientOptions;

/// Settings of an `io.l5d.k8s` namer: `/#/io.l5d.k8s/<namespace>/<port>/<service>[/<label
/// value>]`, addresses from the service's EndpointSlices.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct K8sConfig {
    /// Mounted under `/#/<prefix>`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// The key of a Service label; the path then has a fourth segment, the label's value, and
    /// only a Service carrying that value binds (Linkerd 1's `labelSelector`).
    #[serde(default, alias = "labelSelector")]
    pub label_selector: Option<String>,
    /// The trust domain of mesh identities given to meshed pods' addresses.
    #[serde(default = "default_trust_domain", alias = "trustDomain")]
    pub trust_domain: String,
    /// How to reach the API server.
    #[serde(flatten)]
    pub api: ApiServer,
}

/// Settings of an `io.l5d.k8s.ns` namer: as `io.l5d.k8s` in the pod's own namespace, read
/// from an environment variable; paths are `/<port>/<service>[/<label value>]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct K8sNsConfig {
    /// Mounted under `/#/<prefix>`.
    #[serde(default = "default_ns_prefix")]
    pub prefix: String,
    /// The environment variable holding the namespace (set it from the downward API's
    /// `metadata.namespace`).
    #[serde(default = "default_env_var", alias = "envVar")]
    pub env_var: String,
    /// The key of a Service label whose value is the path's last name segment.
    #[serde(default, alias = "labelSelector")]
    pub label_selector: Option<String>,
    /// The trust domain of mesh identities given to meshed pods' addresses.
    #[serde(default = "default_trust_domain", alias = "trustDomain")]
    pub trust_domain: String,
    /// How to reach the API server.
    #[serde(flatten)]
    pub api: ApiServer,
}

/// Settings of an `io.l5d.k8s.external` namer: the same paths as `io.l5d.k8s`, bound to the
/// Service's load-balancer addresses (`status.loadBalancer.ingress`) at the service port.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct K8sExternalConfig {
    /// Mounted under `/#/<prefix>`.
    #[serde(default = "default_external_prefix")]
    pub prefix: String,
    /// The key of a Service label whose value is the path's fourth segment.
    #[serde(default, alias = "labelSelector")]
    pub label_selector: Option<String>,
    /// How often load-balancer host names are resolved again.
    #[serde(default = "default_dns_refresh_secs")]
    pub dns_refresh_secs: u64,
    /// How to reach the API server.
    #[serde(flatten)]
    pub api: ApiServer,
}

/// How a namer reaches the API server, and how long it keeps watching what nobody asks for.
///
/// By default as `kubectl` does (the pod's service account in a cluster, else `$KUBECONFIG`,
/// else `~/.kube/config`). `host` and `port` instead name a `kubectl proxy`, as namerd's
/// configurations do.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct ApiServer {
    /// A kubeconfig file to use instead of searching for one.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// A kubeconfig context other than the current one.
    #[serde(default)]
    pub context: Option<String>,
    /// The host of a `kubectl proxy` (plain HTTP, no credentials), as namerd's `host`.
    #[serde(default)]
    pub host: Option<String>,
    /// The port of that proxy (namerd's default, 8001, when only `host` is given).
    #[serde(default)]
    pub port: Option<u16>,
    /// How long a service's watches are kept after the last binding or address set that
    /// needed them went away.
    #[serde(default = "default_idle_ttl_secs")]
    pub idle_ttl_secs: u64,
}

fn default_prefix() -> String {
    "/io.l5d.k8s".to_string()
}

fn default_ns_prefix() -> String {
    "/io.l5d.k8s.ns".to_string()
}

fn default_external_prefix() -> String {
    "/io.l5d.k8s.external".to_string()
}

fn default_env_var() -> String {
    "POD_NAMESPACE".to_string()
}

fn default_trust_domain() -> String {
    "cluster.local".to_string()
}

fn default_idle_ttl_secs() -> u64 {
    60
}

fn default_dns_refresh_secs() -> u64 {
    30
}

/// namerd's default `kubectl proxy` port.
const KUBECTL_PROXY_PORT: u16 = 8001;

impl K8sConfig {
    /// Adds every problem with these settings; `at` is the key path of the namer.
    pub fn validate(&self, at: &str, problems: &mut Vec<ConfigProblem>) {
        check_label_key(self.label_selector.as_deref(), at, problems);
        check_trust_domain(&self.trust_domain, at, problems);
        self.api.validate(at, problems);
    }
}

impl K8sNsConfig {
    /// Adds every problem with these settings; `at` is the key path of the namer.
    pub fn validate(&self, at: &str, problems: &mut Vec<ConfigProblem>) {
        if self.env_var.is_empty() || self.env_var.contains('=') {
            problems.push(problem(at, "env_var", "must be an environment variable name"));
        }
        check_label_key(self.label_selector.as_deref(), at, problems);
        check_trust_domain(&self.trust_domain, at, problems);
        self.api.validate(at, problems);
    }
}

impl K8sExternalConfig {
    /// Adds every problem with these settings; `at` is the key path of the namer.
    pub fn validate(&self, at: &str, problems: &mut Vec<ConfigProblem>) {
        check_label_key(self.label_selector.as_deref(), at, problems);
        if self.dns_refresh_secs == 0 {
            problems.push(problem(at, "dns_refresh_secs", "must be at least 1"));
        }
        self.api.validate(at, problems);
    }
}

impl ApiServer {
    fn validate(&self, at: &str, problems: &mut Vec<ConfigProblem>) {
        if self.idle_ttl_secs == 0 {
            problems.push(problem(at, "idle_ttl_secs", "must be at least 1"));
        }
        let proxy = self.host.is_some() || self.port.is_some();
        if proxy && (self.kubeconfig.is_some() || self.context.is_some()) {
            problems.push(problem(
                at,
                "host",
                "a kubectl proxy (host, port) and a kubeconfig (kubeconfig, context) exclude each other",
            ));
        }
        if self.host.as_deref().is_some_and(str::is_empty) {
            problems.push(problem(at, "host", "may not be empty"));
        }
    }

    /// How long unneeded watches are kept.
    pub fn idle_ttl(&self) -> Duration {
        Duration::from_secs(self.idle_ttl_secs)
    }

    /// Builds the client these settings describe.
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
        let options = ClientOptions { kubeconfig: self.kubeconfig.clone(), context: self.context.clone() };
        let (client, source) = waymark_k8s::client::connect(&options).await?;
        tracing::info!(source = %source, "Kubernetes namer configured");
        Ok(client)
    }
}

/// Why a namer could not get a Kubernetes client.
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

fn problem(at: &str, key: &str, message: &str) -> ConfigProblem {
    ConfigProblem { at: format!("{at}.{key}"), message: message.to_string() }
}

fn check_label_key(key: Option<&str>, at: &str, problems: &mut Vec<ConfigProblem>) {
    let Some(key) = key else { return };
    let (prefix, name) = key.rsplit_once('/').map_or((None, key), |(p, n)| (Some(p), n));
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    if !name_ok || prefix.is_some_and(|p| !crate::names::is_dns_subdomain(p)) {
        problems.push(problem(
            at,
            "label_selector",
            "must be a Kubernetes label key, such as version or app.example.com/tier",
        ));
    }
}

fn check_trust_domain(domain: &str, at: &str, problems: &mut Vec<ConfigProblem>) {
    if !crate::names::is_dns_subdomain(domain) {
        problems.push(problem(at, "trust_domain", "must be a DNS subdomain, such as cluster.local"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namerd_keys_load_and_defaults_are_linkerds() {
        let config: K8sConfig =
            serde_json::from_value(serde_json::json!({"host": "localhost", "port": 8001, "labelSelector": "version"}))
                .unwrap();
        assert_eq!(config.prefix, "/io.l5d.k8s");
        assert_eq!(config.label_selector.as_deref(), Some("version"));
        assert_eq!(config.trust_domain, "cluster.local");
        assert_eq!(config.api.idle_ttl(), Duration::from_secs(60));
        let ns: K8sNsConfig = serde_json::from_value(serde_json::json!({"envVar": "MY_NS"})).unwrap();
        assert_eq!((ns.prefix.as_str(), ns.env_var.as_str()), ("/io.l5d.k8s.ns", "MY_NS"));
        let external: K8sExternalConfig = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(external.prefix, "/io.l5d.k8s.external");
        assert!(serde_json::from_value::<K8sConfig>(serde_json::json!({"hots": "x"})).is_err());
    }

    #[test]
    fn every_problem_is_reported_where_it_is() {
        let config: K8sConfig = serde_json::from_value(serde_json::json!({
            "label_selector": "-bad-", "trust_domain": "Not A Domain", "host": "localhost",
            "kubeconfig": "/k", "idle_ttl_secs": 0
        }))
        .unwrap();
        let mut problems = Vec::new();
        config.validate("namers[0]", &mut problems);
        let at: Vec<&str> = problems.iter().map(|p| p.at.as_str()).collect();
        assert_eq!(
            at,
            ["namers[0].label_selector", "namers[0].trust_domain", "namers[0].idle_ttl_secs", "namers[0].host"]
        );
    }
}
