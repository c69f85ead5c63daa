//! The router's configuration: YAML, composed from each component's own section, checked
//! as a whole so that every problem is reported at once.

use std::collections::HashSet;

use serde::Deserialize;
use waymark_dtab::Path;

use crate::admin::AdminConfig;
use crate::client::ClientConfig;
use crate::identify::IdentifierConfig;
use crate::naming::InterpreterConfig;
use crate::retry::ServiceConfig;
use crate::routes::BindingCacheConfig;
use crate::server::ListenerConfig;

/// Everything a router is configured with. Every key has a default: the empty document
/// serves HTTP on 127.0.0.1:4140, names requests `/svc/<host>` and binds through a namer at
/// 127.0.0.1:4321 in namespace `default`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// Worker threads of the runtime; unset means one per available CPU.
    #[serde(default)]
    pub worker_threads: Option<usize>,
    /// The admin listener (metrics, readiness, delegation, log level).
    #[serde(default)]
    pub admin: AdminConfig,
    /// The proxy listeners.
    #[serde(default = "default_listeners")]
    pub listeners: Vec<ListenerConfig>,
    /// The prefix of every logical name (Linkerd 1's `dstPrefix`).
    #[serde(default = "default_dst_prefix")]
    pub dst_prefix: String,
    /// How requests are named, tried in order (Linkerd 1's `identifier`).
    #[serde(default = "default_identifiers")]
    pub identifier: Vec<IdentifierConfig>,
    /// Where bindings come from (Linkerd 1's `interpreter`).
    #[serde(default)]
    pub interpreter: InterpreterConfig,
    /// How long a request may wait for its name to be bound and resolved (Linkerd 1's
    /// `bindingTimeoutMs`).
    #[serde(default = "default_binding_timeout_ms")]
    pub binding_timeout_ms: u64,
    /// Limits on live bindings (Linkerd 1's `bindingCache`).
    #[serde(default)]
    pub binding_cache: BindingCacheConfig,
    /// The most bytes of `l5d-ctx-dtab` plus `l5d-dtab` a request may carry; more is refused
    /// with 431.
    #[serde(default = "default_max_override_bytes")]
    pub max_override_bytes: usize,
    /// Connections to endpoints, load balancing and failure accrual (Linkerd 1's `client`).
    #[serde(default)]
    pub client: ClientConfig,
    /// Timeouts, retries and response classification (Linkerd 1's `service`).
    #[serde(default)]
    pub service: ServiceConfig,
    /// On shutdown, how long requests in flight may take to finish.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
}

/// A configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The text is not a valid configuration document.
    #[error("{0}")]
    Syntax(String),
    /// The document is well-formed, but some values are not acceptable.
    #[error("invalid router configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

fn default_listeners() -> Vec<ListenerConfig> {
    vec![ListenerConfig::default()]
}
fn default_dst_prefix() -> String {
    "/svc".to_string()
}
fn default_identifiers() -> Vec<IdentifierConfig> {
    vec![IdentifierConfig::Host]
}
fn default_binding_timeout_ms() -> u64 {
    10_000
}
fn default_max_override_bytes() -> usize {
    8 * 1024
}
fn default_drain_timeout_ms() -> u64 {
    10_000
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            worker_threads: None,
            admin: AdminConfig::default(),
            listeners: default_listeners(),
            dst_prefix: default_dst_prefix(),
            identifier: default_identifiers(),
            interpreter: InterpreterConfig::default(),
            binding_timeout_ms: default_binding_timeout_ms(),
            binding_cache: BindingCacheConfig::default(),
            max_override_bytes: default_max_override_bytes(),
            client: ClientConfig::default(),
            service: ServiceConfig::default(),
            drain_timeout_ms: default_drain_timeout_ms(),
        }
    }
}

impl RouterConfig {
    /// Parses and validates a YAML document. An empty document is the default configuration.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let config: RouterConfig = if text.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
            RouterConfig::default()
        } else {
            serde_saphyr::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks every value, reporting all problems together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.worker_threads == Some(0) {
            problems.push("worker_threads: must be at least 1 (or left out)".to_string());
        }
        if let Err(e) = self.dst_prefix.parse::<Path>() {
            problems.push(format!("dst_prefix: {:?} is not a path: {e}", self.dst_prefix));
        }
        if self.identifier.is_empty() {
            problems.push("identifier: needs at least one identifier".to_string());
        }
        for (i, identifier) in self.identifier.iter().enumerate() {
            identifier.problems(&format!("identifier[{i}]"), &mut problems);
        }
        if self.listeners.is_empty() {
            problems.push("listeners: needs at least one listener".to_string());
        }
        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        for (i, listener) in self.listeners.iter().enumerate() {
            let at = format!("listeners[{i}]");
            listener.problems(&at, &mut problems);
            if !names.insert(&listener.name) {
                problems.push(format!("{at}.name: {:?} is used by another listener", listener.name));
            }
            if listener.port != 0 && !addrs.insert(listener.addr()) {
                problems.push(format!("{at}: {} is used by another listener", listener.addr()));
            }
        }
        self.admin.problems("admin", &mut problems);
        if self.admin.port != 0 && addrs.contains(&self.admin.addr()) {
            problems.push(format!("admin: {} is also a proxy listener", self.admin.addr()));
        }
        self.interpreter.problems("interpreter", &mut problems);
        if self.binding_timeout_ms == 0 {
            problems.push("binding_timeout_ms: must be more than 0".to_string());
        }
        self.binding_cache.problems("binding_cache", &mut problems);
        if self.max_override_bytes == 0 {
            problems.push("max_override_bytes: must be more than 0".to_string());
        }
        self.client.problems("client", &mut problems);
        self.service.problems("service", &mut problems);
        if problems.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(problems)) }
    }

    /// The prefix as a path (only meaningful on validated configuration).
    pub(crate) fn prefix(&self, listener: &ListenerConfig) -> Path {
        listener.dst_prefix.as_deref().unwrap_or(&self.dst_prefix).parse().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_empty_document_is_the_documented_default() {
        let config = RouterConfig::from_yaml("# nothing\n").unwrap();
        assert_eq!(config, RouterConfig::default());
        assert_eq!(config.listeners[0].addr().to_string(), "127.0.0.1:4140");
        assert!(config.listeners[0].is_trusted());
        assert!(matches!(
            &config.interpreter,
            InterpreterConfig::Mesh { dst, namespace, .. } if dst == "127.0.0.1:4321" && namespace == "default"
        ));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let yaml = r#"
dst_prefix: "no-slash"
binding_timeout_ms: 0
identifier:
  - kind: path
    segments: 0
listeners:
  - port: 4140
  - port: 4140
interpreter:
  kind: standalone
  dtab: "/svc => "
client:
  failure_accrual:
    kind: consecutive_failures
    min_backoff_ms: 10
    max_backoff_ms: 1
service:
  retries:
    budget:
      percent_can_retry: 2
"#;
        let err = RouterConfig::from_yaml(yaml).unwrap_err();
        let ConfigError::Invalid(problems) = &err else { panic!("{err}") };
        let text = err.to_string();
        for needle in [
            "dst_prefix",
            "binding_timeout_ms",
            "identifier[0].segments",
            "listeners[1].name",
            "listeners[1]: 127.0.0.1:4140",
            "interpreter.dtab",
            "client.failure_accrual",
            "percent_can_retry",
        ] {
            assert!(text.contains(needle), "missing {needle} in:\n{text}");
        }
        assert_eq!(problems.len(), 8, "{text}");
    }

    #[test]
    fn unknown_keys_and_kinds_are_refused() {
        let err = RouterConfig::from_yaml("binding_timeout: 5\n").unwrap_err();
        assert!(err.to_string().contains("binding_timeout"), "{err}");
        let err = RouterConfig::from_yaml("identifier:\n  - kind: nope\n").unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn the_example_file_loads() {
        let config = RouterConfig::from_yaml(include_str!("../examples/router.yaml")).unwrap();
        assert_eq!(config.listeners.len(), 2);
        assert!(config.listeners[0].is_trusted() && !config.listeners[1].is_trusted());
        assert_eq!(config.service.retries.budget.percent_can_retry, 0.2);
    }

    #[test]
    fn the_benchmark_file_loads() {
        let config = RouterConfig::from_yaml(include_str!("../examples/bench.yaml")).unwrap();
        assert_eq!(config.worker_threads, Some(1));
        let h2 = RouterConfig::from_yaml(include_str!("../examples/bench-h2-upstream.yaml")).unwrap();
        assert_eq!(h2.client.protocol, crate::client::UpstreamProtocol::Http2);
    }

    #[test]
    fn linkerd_kind_names_are_accepted() {
        let yaml = r#"
identifier:
  - kind: io.l5d.header.token
    header: host
  - kind: io.l5d.methodAndHost
client:
  load_balancer:
    kind: roundRobin
  failure_accrual:
    kind: io.l5d.consecutiveFailures
    failures: 3
service:
  response_classifier:
    kind: io.l5d.http.retryableRead5XX
interpreter:
  kind: io.l5d.mesh
  dst: namer.default:4321
"#;
        let config = RouterConfig::from_yaml(yaml).unwrap();
        assert_eq!(config.identifier.len(), 2);
    }
}
