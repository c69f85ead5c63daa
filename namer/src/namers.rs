//! The kinds of namer the namer service offers: the built-in ones every service has, and the
//! Kubernetes ones (`waymark-k8s-namer`), which only this service links.

use std::sync::Arc;

use serde::Deserialize;
use waymark_interpreter::namers::{
    ConfigProblem, FsConfig, FsNamer, RewriteConfig, RewriteNamer, StaticConfig, StaticNamer,
};
use waymark_interpreter::{Dns, NamerKind, NamerStartError, ServiceNamer};
use waymark_k8s_namer::{K8sConfig, K8sExternalConfig, K8sNsConfig, KubernetesNamer};

/// One configured namer, chosen by `kind` (Linkerd 1's names).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "kind")]
pub enum NamerKindConfig {
    /// `io.l5d.fs`: a directory of files, one per service, each line `host port [* weight]`.
    #[serde(rename = "io.l5d.fs")]
    Fs(FsConfig),
    /// `io.l5d.static`: names mapped to fixed addresses in the configuration.
    #[serde(rename = "io.l5d.static")]
    Static(StaticConfig),
    /// `io.l5d.rewrite`: a path rewritten by pattern into another path to bind.
    #[serde(rename = "io.l5d.rewrite")]
    Rewrite(RewriteConfig),
    /// `io.l5d.k8s`: Kubernetes services, `/<namespace>/<port>/<service>`, addresses from
    /// their EndpointSlices.
    #[serde(rename = "io.l5d.k8s")]
    K8s(K8sConfig),
    /// `io.l5d.k8s.ns`: Kubernetes services of the pod's own namespace, `/<port>/<service>`.
    #[serde(rename = "io.l5d.k8s.ns")]
    K8sNs(K8sNsConfig),
    /// `io.l5d.k8s.external`: Kubernetes services' load-balancer addresses.
    #[serde(rename = "io.l5d.k8s.external")]
    K8sExternal(K8sExternalConfig),
}

impl NamerKind for NamerKindConfig {
    fn prefix(&self) -> &str {
        match self {
            NamerKindConfig::Fs(c) => &c.prefix,
            NamerKindConfig::Static(c) => &c.prefix,
            NamerKindConfig::Rewrite(c) => &c.prefix,
            NamerKindConfig::K8s(c) => &c.prefix,
            NamerKindConfig::K8sNs(c) => &c.prefix,
            NamerKindConfig::K8sExternal(c) => &c.prefix,
        }
    }

    fn settings_problems(&self, at: &str, problems: &mut Vec<ConfigProblem>) {
        match self {
            NamerKindConfig::Fs(c) => c.validate(at, problems),
            NamerKindConfig::Static(c) => c.validate(at, problems),
            NamerKindConfig::Rewrite(c) => c.validate(at, problems),
            NamerKindConfig::K8s(c) => c.validate(at, problems),
            NamerKindConfig::K8sNs(c) => c.validate(at, problems),
            NamerKindConfig::K8sExternal(c) => c.validate(at, problems),
        }
    }

    async fn start(&self, dns: &Dns) -> Result<Arc<dyn ServiceNamer>, NamerStartError> {
        Ok(match self {
            NamerKindConfig::Fs(c) => FsNamer::start(c.clone(), dns.clone()).await,
            NamerKindConfig::Static(c) => {
                Arc::new(StaticNamer::new(c).map_err(|e| NamerStartError::new("io.l5d.static", e))?)
            }
            NamerKindConfig::Rewrite(c) => Arc::new(RewriteNamer::new(c)),
            NamerKindConfig::K8s(c) => KubernetesNamer::endpoints(c).await?,
            NamerKindConfig::K8sNs(c) => KubernetesNamer::own_namespace(c).await?,
            NamerKindConfig::K8sExternal(c) => KubernetesNamer::external(c, dns.clone()).await?,
        })
    }
}
