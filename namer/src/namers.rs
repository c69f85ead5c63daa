//! The kinds of namer the namer service offers: the built-in ones every service has, and the
//! Kubernetes ones, which only this service links.

use std::sync::Arc;

use serde::Deserialize;
use waymark_interpreter::namers::{
    ConfigProblem, FsConfig, FsNamer, RewriteConfig, RewriteNamer, StaticConfig, StaticNamer,
};
use waymark_interpreter::{Dns, NamerKind, NamerStartError, ServiceNamer};

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
}

impl NamerKind for NamerKindConfig {
    fn prefix(&self) -> &str {
        match self {
            NamerKindConfig::Fs(c) => &c.prefix,
            NamerKindConfig::Static(c) => &c.prefix,
            NamerKindConfig::Rewrite(c) => &c.prefix,
        }
    }

    fn settings_problems(&self, at: &str, problems: &mut Vec<ConfigProblem>) {
        match self {
            NamerKindConfig::Fs(c) => c.validate(at, problems),
            NamerKindConfig::Static(c) => c.validate(at, problems),
            NamerKindConfig::Rewrite(c) => c.validate(at, problems),
        }
    }

    async fn start(&self, dns: &Dns) -> Result<Arc<dyn ServiceNamer>, NamerStartError> {
        Ok(match self {
            NamerKindConfig::Fs(c) => FsNamer::start(c.clone(), dns.clone()).await,
            NamerKindConfig::Static(c) => {
                Arc::new(StaticNamer::new(c).map_err(|e| NamerStartError::new("io.l5d.static", e))?)
            }
            NamerKindConfig::Rewrite(c) => Arc::new(RewriteNamer::new(c)),
        })
    }
}
