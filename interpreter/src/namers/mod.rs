//! Namers: service discovery systems mounted under `/#/<prefix>`.
//!
//! [`ServiceNamer`] is what the interpreter needs from any namer, and [`NamerKind`] is what it
//! needs from a configured kind of namer: its prefix, its settings' problems and a way to
//! start it. The interpreter does not choose the kinds. Each service composes its own set:
//! the router's standalone mode uses [`BuiltinNamer`] (files, static addresses, rewriting, and
//! DNS through `/$/inet`), while the namer service adds Kubernetes, so that the sidecar never
//! links a Kubernetes client.

use std::future::Future;
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
pub use static_names::{InvalidStaticName, StaticConfig, StaticNamer};

/// A namer that can be watched: besides answering lookups from its current state (the
/// [`Namer`] trait), it says when those answers may have changed and resolves the concrete
/// names it binds to address sets.
pub trait ServiceNamer: Namer {
    /// A counter that moves whenever an answer of [`Namer::lookup`] may have changed.
    fn changes(&self) -> watch::Receiver<u64>;

    /// A counter that moves whenever the answer of [`Namer::lookup`] for `path` may have
    /// changed; [`ServiceNamer::changes`] must move then too. A binding holds this receiver
    /// for as long as it is kept, so that only the bindings a change concerns bind again,
    /// and a namer that watches its source per name may take the held receivers as interest
    /// in that name, and stop watching it when none is held. By default, the namer-wide
    /// [`ServiceNamer::changes`].
    fn lookup_changes(&self, path: &Path) -> watch::Receiver<u64> {
        let _ = path;
        self.changes()
    }

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

    /// What the namer holds, as JSON for its admin page (`/namer_state/<prefix>.json`), if it
    /// has one.
    fn state_json(&self) -> Option<serde_json::Value> {
        None
    }
}

/// A configured kind of namer: everything needed to check its settings, mount it and start
/// it. Each service that binds names composes the kinds it offers in an enum that implements
/// this trait, tagged by `kind` in its configuration.
pub trait NamerKind {
    /// The prefix the namer is mounted under, after `/#` (such as `/io.l5d.fs`).
    fn prefix(&self) -> &str;

    /// Adds every problem with this namer's own settings; `at` is the key path of the namer
    /// itself (such as `namers[0]`).
    fn settings_problems(&self, at: &str, problems: &mut Vec<ConfigProblem>);

    /// Starts the namer. Must be called inside a tokio runtime.
    fn start(&self, dns: &Dns) -> impl Future<Output = Result<Arc<dyn ServiceNamer>, NamerStartError>> + Send;

    /// The full mount path, `/#/<prefix>`.
    fn mount(&self) -> Result<Path, InvalidPrefix> {
        let prefix = self.prefix();
        let parsed: Path =
            prefix.parse().map_err(|e| InvalidPrefix { prefix: prefix.to_string(), source: Some(Box::new(e)) })?;
        if parsed.is_empty() {
            return Err(InvalidPrefix { prefix: prefix.to_string(), source: None });
        }
        Ok(Path::utf8(["#"]).expect("# is a label").concat(&parsed))
    }

    /// Every problem with this namer: its prefix and its settings.
    fn problems(&self, at: &str) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        if let Err(e) = self.mount() {
            problems.push(ConfigProblem { at: format!("{at}.prefix"), message: e.to_string() });
        }
        self.settings_problems(at, &mut problems);
        problems
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

/// The namers every service may use, the router's standalone mode included: none of them
/// needs more than files, the configuration and DNS.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "kind")]
pub enum BuiltinNamer {
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

/// A namer prefix that is not a non-empty path.
#[derive(Debug, thiserror::Error)]
#[error("the prefix {prefix:?} is not a non-empty path")]
pub struct InvalidPrefix {
    /// The prefix as configured.
    pub prefix: String,
    /// Why it does not parse, when it does not.
    #[source]
    pub source: Option<Box<waymark_dtab::ParseError>>,
}

/// Why a configured namer could not start.
#[derive(Debug, thiserror::Error)]
#[error("starting the {kind} namer")]
pub struct NamerStartError {
    /// The namer's kind, such as `io.l5d.fs`.
    pub kind: &'static str,
    /// What went wrong.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl NamerStartError {
    /// A failure to start a namer of `kind`.
    pub fn new(kind: &'static str, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        NamerStartError { kind, source: source.into() }
    }
}

impl NamerKind for BuiltinNamer {
    fn prefix(&self) -> &str {
        match self {
            BuiltinNamer::Fs(c) => &c.prefix,
            BuiltinNamer::Static(c) => &c.prefix,
            BuiltinNamer::Rewrite(c) => &c.prefix,
        }
    }

    fn settings_problems(&self, at: &str, problems: &mut Vec<ConfigProblem>) {
        match self {
            BuiltinNamer::Fs(c) => c.validate(at, problems),
            BuiltinNamer::Static(c) => c.validate(at, problems),
            BuiltinNamer::Rewrite(c) => c.validate(at, problems),
        }
    }

    async fn start(&self, dns: &Dns) -> Result<Arc<dyn ServiceNamer>, NamerStartError> {
        Ok(match self {
            BuiltinNamer::Fs(c) => FsNamer::start(c.clone(), dns.clone()).await,
            BuiltinNamer::Static(c) => {
                Arc::new(StaticNamer::new(c).map_err(|e| NamerStartError::new("io.l5d.static", e))?)
            }
            BuiltinNamer::Rewrite(c) => Arc::new(RewriteNamer::new(c)),
        })
    }
}

/// Every problem with a set of namers: each one's own, and prefixes that overlap.
pub fn validate_all<K: NamerKind>(namers: &[K], at: &str) -> Vec<ConfigProblem> {
    let mut problems: Vec<ConfigProblem> =
        namers.iter().enumerate().flat_map(|(i, n)| n.problems(&format!("{at}[{i}]"))).collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fs(prefix: &str) -> BuiltinNamer {
        BuiltinNamer::Fs(FsConfig { prefix: prefix.into(), root_dir: "/tmp".into(), poll_interval_ms: 1 })
    }

    #[test]
    fn prefixes_must_be_paths_and_may_not_overlap() {
        let problems = validate_all(&[fs("/io.l5d.fs"), fs("/io.l5d.fs/web"), fs(""), fs("no-slash")], "namers");
        let at: Vec<&str> = problems.iter().map(|p| p.at.as_str()).collect();
        assert_eq!(at, ["namers[2].prefix", "namers[3].prefix", "namers[1].prefix"], "{problems:?}");
        assert!(problems[2].message.contains("overlaps"), "{problems:?}");
        assert_eq!(fs("/io.l5d.fs").mount().unwrap().to_string(), "/#/io.l5d.fs");
    }
}
