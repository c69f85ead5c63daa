//! `io.l5d.rewrite`: rewrites a path by pattern, as Linkerd's rewriting namer does.
//!
//! `pattern` is matched against the path under the mount, segment by segment from the start:
//! a literal segment must be equal, `*` matches any one segment, and `{name}` matches any one
//! segment and captures it. Segments after the pattern are ignored. `name`, with every
//! `{name}` replaced by its capture, is the path binding continues with. Linkerd's
//! servicemesh example mounts it at `/portNsSvcToK8s` with pattern `/{port}/{ns}/{svc}` and
//! name `/k8s/{ns}/{port}/{svc}`.

use std::collections::BTreeMap;

use serde::Deserialize;
use tokio::sync::watch;
use waymark_dtab::{Addr, Lookup, Name, NameTree, Namer, Path};

use super::{ConfigProblem, ServiceNamer};

/// Settings of a rewriting namer. Unlike the other namers, it has no default prefix.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RewriteConfig {
    /// Mounted under `/#/<prefix>`; required.
    pub prefix: String,
    /// What to match, such as `/{port}/{ns}/{svc}`.
    pub pattern: String,
    /// What to bind instead, such as `/k8s/{ns}/{port}/{svc}`.
    pub name: String,
}

/// The namer.
#[derive(Debug)]
pub struct RewriteNamer {
    pattern: Vec<Segment>,
    name: String,
    changes: watch::Sender<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Any,
    Capture(String),
}

fn parse_pattern(pattern: &str) -> Vec<Segment> {
    pattern
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| match s {
            "*" => Segment::Any,
            _ if s.len() > 2 && s.starts_with('{') && s.ends_with('}') => {
                Segment::Capture(s[1..s.len() - 1].to_string())
            }
            _ => Segment::Literal(s.to_string()),
        })
        .collect()
}

/// `name` with every capture substituted.
fn substitute(name: &str, captures: &BTreeMap<String, String>) -> String {
    captures.iter().fold(name.to_string(), |text, (var, value)| text.replace(&format!("{{{var}}}"), value))
}

impl RewriteConfig {
    /// Adds every problem with these settings; `at` is the key path of the namer.
    pub fn validate(&self, at: &str, problems: &mut Vec<ConfigProblem>) {
        if self.pattern.split('/').all(str::is_empty) {
            problems.push(ConfigProblem { at: format!("{at}.pattern"), message: "may not be empty".into() });
        }
        let captured: Vec<String> = parse_pattern(&self.pattern)
            .into_iter()
            .filter_map(|s| match s {
                Segment::Capture(var) => Some(var),
                _ => None,
            })
            .collect();
        // With every capture replaced by a plain label, the name must be a valid path.
        let sample = substitute(&self.name, &captured.iter().map(|v| (v.clone(), "x".to_string())).collect());
        if let Err(e) = sample.parse::<Path>() {
            problems.push(ConfigProblem {
                at: format!("{at}.name"),
                message: format!("not a path once captures are filled in: {e}"),
            });
        }
    }
}

impl RewriteNamer {
    /// The namer for `config`.
    pub fn new(config: &RewriteConfig) -> Self {
        RewriteNamer {
            pattern: parse_pattern(&config.pattern),
            name: config.name.clone(),
            changes: watch::Sender::new(0),
        }
    }
}

impl Namer for RewriteNamer {
    fn lookup(&self, path: &Path) -> Lookup {
        if path.len() < self.pattern.len() {
            return Lookup::Found(NameTree::Neg);
        }
        let mut captures = BTreeMap::new();
        for (segment, label) in self.pattern.iter().zip(path.labels()) {
            // Segments compare in their printed form, as Linkerd's matcher does.
            let shown = label.to_string();
            match segment {
                Segment::Any => {}
                Segment::Literal(text) if *text == shown => {}
                Segment::Literal(_) => return Lookup::Found(NameTree::Neg),
                Segment::Capture(var) => {
                    captures.insert(var.clone(), shown);
                }
            }
        }
        match substitute(&self.name, &captures).parse::<Path>() {
            Ok(rewritten) => Lookup::Found(NameTree::Leaf(Name::Path(rewritten))),
            Err(e) => Lookup::Failed(format!("rewriting {path}: {e}")),
        }
    }
}

impl ServiceNamer for RewriteNamer {
    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// A rewriting namer never binds a concrete name itself.
    fn resolve(&self, _id: &Path) -> watch::Receiver<Addr> {
        watch::channel(Addr::Neg).1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use waymark_dtab::{BindOptions, Dtab, Namers, bind_path};

    #[test]
    fn captures_fill_the_name_and_binding_continues() {
        let config = RewriteConfig {
            prefix: "/portNsSvcToK8s".into(),
            pattern: "/{port}/{ns}/{svc}".into(),
            name: "/$/inet/{svc}.{ns}/{port}".into(),
        };
        let mut problems = Vec::new();
        config.validate("namers[0]", &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let mut namers = Namers::new();
        namers.mount("/#/portNsSvcToK8s".parse().unwrap(), std::sync::Arc::new(RewriteNamer::new(&config))).unwrap();
        let dtab: Dtab = "/svc=>/#/portNsSvcToK8s/8080/prod".parse().unwrap();
        let bound = bind_path(&dtab, &namers, &"/svc/web/extra".parse().unwrap(), BindOptions::default());
        assert_eq!(bound.tree().unwrap().to_string(), "/$/inet/web.prod/8080");
        // Too short, or a literal that differs: negative.
        let literal = RewriteNamer::new(&RewriteConfig {
            prefix: "/r".into(),
            pattern: "/api/*/{v}".into(),
            name: "/{v}".into(),
        });
        assert_eq!(literal.lookup(&"/api/x".parse().unwrap()), Lookup::Found(NameTree::Neg));
        assert_eq!(literal.lookup(&"/web/x/y".parse().unwrap()), Lookup::Found(NameTree::Neg));
        assert_eq!(
            literal.lookup(&"/api/x/y".parse().unwrap()),
            Lookup::Found(NameTree::Leaf(Name::Path("/y".parse().unwrap())))
        );
    }

    #[test]
    fn a_name_that_cannot_be_a_path_is_a_configuration_problem() {
        let config = RewriteConfig { prefix: "/r".into(), pattern: "/{a}".into(), name: "no-slash-{a}".into() };
        let mut problems = Vec::new();
        config.validate("namers[2]", &mut problems);
        assert_eq!(problems[0].at, "namers[2].name");
    }
}
