//! Configured namers: service discovery systems mounted under `/#/<prefix>`.

use std::sync::Arc;

use serde::Deserialize;
use tokio::sync::watch;
use waymark_dtab::{Addr, Namer, Path};

use crate::dns::Dns;

pub mod fs;
pub mod rewrite;
pub mod static_names;

pub use fs::{FsConfig, FsNamer};
pub use rewrite::{RewriteConfig, RewriteNamer};
pub use static_names::{StaticConfig, StaticNamer};

/// A namer that can be watched: besides answering lookups from its current state (the
/// [`Namer`] trait), it says when those answers may have changed and resolves the concrete
/// names it binds to address sets.
pub trait ServiceNamer: Namer {
    /// A counter that moves whenever an answer of [`Namer::lookup`] may have changed.
    fn changes(&self) -> watch::Receiver<u64>;

    /// Watches the address set of a concrete name this namer bound; `id` is relative to the
    /// mount prefix (for `/#/io.l5d.fs/web`, `/web`).
    fn resolve(&self, id: &Path) -> watch::Receiver<Addr>;

    /// The concrete names this namer can list, relative to its mount, if it can.
    fn names(&self) -> Option<Vec<Path>> {
        None
    }

    /// Whether the namer can read its source now. A namer that cannot keeps answering from
    /// its last good state: "I could not look" is never "it is not there".
    fn health(&self) -> NamerHealth {
        NamerHealth::default()
    }
}

/// Whether a namer can read its source (a directory, a service registry).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamerHealth {
    /// Why it cannot, while it cannot; it serves its last good state meanwhile.
    pub problem: Option<String>,
    /// How many reads of its source have failed since it started.
    pub read_failures: u64,
}

/// One configured namer, chosen by `kind`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "kind")]
pub enum NamerConfig {
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

/// A configuration problem: where (a dotted key path) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Where, as a key path such as `namers[0].root_dir`.
    pub at: String,
    /// What is wrong.
    pub message: String,
}

impl NamerConfig {
    /// The prefix the namer is mounted under, after `/#`.
    pub fn prefix(&self) -> &str {
        match self {
            NamerConfig::Fs(c) => &c.prefix,
            NamerConfig::Static(c) => &c.prefix,
            NamerConfig::Rewrite(c) => &c.prefix,
        }
    }

    /// The full mount path, `/#/<prefix>`.
    pub fn mount(&self) -> Result<Path, String> {
        let prefix: Path = self.prefix().parse().map_err(|e| format!("invalid prefix {:?}: {e}", self.prefix()))?;
        if prefix.is_empty() {
            return Err("the prefix may not be empty".to_string());
        }
        Ok(Path::utf8(["#"]).map_err(|e| e.to_string())?.concat(&prefix))
    }

    /// Every problem with this namer's settings; `at` is the key path of the namer itself.
    pub fn validate(&self, at: &str) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        if let Err(message) = self.mount() {
            problems.push(ConfigProblem { at: format!("{at}.prefix"), message });
        }
        match self {
            NamerConfig::Fs(c) => c.validate(at, &mut problems),
            NamerConfig::Static(c) => c.validate(at, &mut problems),
            NamerConfig::Rewrite(c) => c.validate(at, &mut problems),
        }
        problems
    }

    /// Starts the namer. Must be called inside a tokio runtime.
    pub async fn build(&self, dns: &Dns) -> Result<Arc<dyn ServiceNamer>, String> {
        Ok(match self {
            NamerConfig::Fs(c) => FsNamer::start(c.clone(), dns.clone()).await?,
            NamerConfig::Static(c) => Arc::new(StaticNamer::new(c)?),
            NamerConfig::Rewrite(c) => Arc::new(RewriteNamer::new(c)),
        })
    }
}

/// Problems with the set of namers as a whole: prefixes that are empty or overlap.
pub fn validate_all(namers: &[NamerConfig], at: &str) -> Vec<ConfigProblem> {
    let mut problems: Vec<ConfigProblem> =
        namers.iter().enumerate().flat_map(|(i, n)| n.validate(&format!("{at}[{i}]"))).collect();
    let mounts: Vec<(usize, Path)> =
        namers.iter().enumerate().filter_map(|(i, n)| n.mount().ok().map(|m| (i, m))).collect();
    for (i, a) in &mounts {
        for (j, b) in &mounts {
            if i < j && (a.starts_with(b) || b.starts_with(a)) {
                problems.push(ConfigProblem {
                    at: format!("{at}[{j}].prefix"),
                    message: format!("{b} overlaps the prefix of {at}[{i}] ({a})"),
                });
            }
        }
    }
    problems
}
