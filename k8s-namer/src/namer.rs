//! The namers themselves: paths in, lookups and address sets out.

use std::sync::Arc;

use tokio::sync::watch;
use waymark_dtab::{Addr, BoundName, Lookup, Name, NameTree, Namer, Path};
use waymark_interpreter::{Dns, NamerHealth, NamerStartError, ServiceNamer};

use crate::cluster::{Answer, Cluster, Mode};
use crate::config::{K8sConfig, K8sExternalConfig, K8sNsConfig};
use crate::model::IdentityNaming;
use crate::names::PathShape;

/// A Kubernetes namer: `io.l5d.k8s`, `io.l5d.k8s.ns` or `io.l5d.k8s.external`, as its
/// configuration says.
pub struct KubernetesNamer {
    kind: &'static str,
    shape: PathShape,
    label_key: Option<String>,
    cluster: Arc<Cluster>,
}

/// Why `io.l5d.k8s.ns` cannot know its namespace.
#[derive(Debug, thiserror::Error)]
#[error("the environment variable {0} does not hold a namespace name")]
pub struct NoNamespace(pub String);

impl KubernetesNamer {
    /// Starts an `io.l5d.k8s` namer.
    pub async fn endpoints(config: &K8sConfig) -> Result<Arc<Self>, NamerStartError> {
        let kind = "io.l5d.k8s";
        let client = config.api.client().await.map_err(|e| NamerStartError::new(kind, e))?;
        let naming = IdentityNaming { trust_domain: config.trust_domain.clone() };
        Ok(Arc::new(KubernetesNamer {
            kind,
            shape: PathShape { namespace: None, labelled: config.label_selector.is_some() },
            label_key: config.label_selector.clone(),
            cluster: Cluster::new(client, Mode::Endpoints(naming), config.api.idle_ttl()),
        }))
    }

    /// Starts an `io.l5d.k8s.ns` namer, in the namespace its environment variable names.
    pub async fn own_namespace(config: &K8sNsConfig) -> Result<Arc<Self>, NamerStartError> {
        let kind = "io.l5d.k8s.ns";
        let namespace = std::env::var(&config.env_var)
            .ok()
            .filter(|ns| crate::names::is_dns_label(ns))
            .ok_or_else(|| NamerStartError::new(kind, NoNamespace(config.env_var.clone())))?;
        let client = config.api.client().await.map_err(|e| NamerStartError::new(kind, e))?;
        let naming = IdentityNaming { trust_domain: config.trust_domain.clone() };
        Ok(Arc::new(KubernetesNamer {
            kind,
            shape: PathShape { namespace: Some(namespace), labelled: config.label_selector.is_some() },
            label_key: config.label_selector.clone(),
            cluster: Cluster::new(client, Mode::Endpoints(naming), config.api.idle_ttl()),
        }))
    }

    /// Starts an `io.l5d.k8s.external` namer.
    pub async fn external(config: &K8sExternalConfig, dns: Dns) -> Result<Arc<Self>, NamerStartError> {
        let kind = "io.l5d.k8s.external";
        let client = config.api.client().await.map_err(|e| NamerStartError::new(kind, e))?;
        let refresh = std::time::Duration::from_secs(config.dns_refresh_secs);
        Ok(Arc::new(KubernetesNamer {
            kind,
            shape: PathShape { namespace: None, labelled: config.label_selector.is_some() },
            label_key: config.label_selector.clone(),
            cluster: Cluster::new(client, Mode::External { dns, refresh }, config.api.idle_ttl()),
        }))
    }
}

impl std::fmt::Debug for KubernetesNamer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesNamer").field("kind", &self.kind).field("shape", &self.shape).finish_non_exhaustive()
    }
}

impl Namer for KubernetesNamer {
    /// Binds `/<namespace>/<port>/<service>[/<label value>]` (lower-cased) when the service
    /// exists, carries the label value and has the port; the rest of the path is the
    /// residual. Pending until the namespace's services are listed; negative for anything
    /// else.
    fn lookup(&self, path: &Path) -> Lookup {
        let Some(parsed) = self.shape.parse(path) else { return Lookup::Found(NameTree::Neg) };
        match self.cluster.lookup(&parsed.name, self.label_key.as_deref()) {
            Answer::Pending => Lookup::Pending,
            Answer::Neg => Lookup::Found(NameTree::Neg),
            Answer::Bound => Lookup::Found(NameTree::Leaf(Name::Bound(BoundName::new(parsed.id, parsed.residual)))),
        }
    }
}

impl ServiceNamer for KubernetesNamer {
    fn changes(&self) -> watch::Receiver<u64> {
        self.cluster.changes()
    }

    fn lookup_changes(&self, path: &Path) -> watch::Receiver<u64> {
        match self.shape.parse(path) {
            Some(parsed) => self.cluster.lookup_changes(&parsed.name),
            // Its answer never changes.
            None => watch::channel(0).1,
        }
    }

    fn resolve(&self, id: &Path) -> watch::Receiver<Addr> {
        match self.shape.parse_id(id) {
            Some(name) => self.cluster.addresses(&name),
            None => watch::channel(Addr::Neg).1,
        }
    }

    fn health(&self) -> NamerHealth {
        self.cluster.health()
    }

    fn state_json(&self) -> Option<serde_json::Value> {
        Some(self.cluster.state_json())
    }
}
