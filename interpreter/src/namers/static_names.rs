//! `io.l5d.static`: names mapped to fixed addresses in the configuration.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Deserialize;
use tokio::sync::watch;
use waymark_dtab::{Addr, BoundName, Lookup, Name, NameTree, Namer, Path};

use super::{ConfigProblem, ServiceNamer};

/// Settings of a static namer.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StaticConfig {
    /// Mounted under `/#/<prefix>`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Each name (a path such as `web` or `web/v2`, relative to the mount) with its
    /// addresses as `ip:port` (`[v6]:port` for IPv6).
    pub names: BTreeMap<String, Vec<String>>,
}

fn default_prefix() -> String {
    "/io.l5d.static".to_string()
}

/// A static name or address that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidStaticName {
    /// The name is not a path.
    #[error("the name {0:?} has an empty label")]
    EmptyLabel(String),
    /// The name is empty.
    #[error("a name may not be empty")]
    Empty,
    /// An address is not `ip:port`.
    #[error("{address:?} is not ip:port")]
    Address {
        /// The address as configured.
        address: String,
        /// Why it does not parse.
        #[source]
        source: std::net::AddrParseError,
    },
}

/// The namer: fixed names, fixed addresses. Host names are not allowed here; a dtab can
/// send a name to `/$/inet/<host>/<port>` for DNS.
#[derive(Debug)]
pub struct StaticNamer {
    names: BTreeMap<Path, Addr>,
    changes: watch::Sender<u64>,
}

impl StaticConfig {
    /// Adds every problem with these settings; `at` is the key path of the namer.
    pub fn validate(&self, at: &str, problems: &mut Vec<ConfigProblem>) {
        for (name, addrs) in &self.names {
            if let Err(e) = name_path(name) {
                problems.push(ConfigProblem { at: format!("{at}.names.{name}"), message: e.to_string() });
            }
            for (i, addr) in addrs.iter().enumerate() {
                if let Err(e) = parse_address(addr) {
                    problems.push(ConfigProblem {
                        at: format!("{at}.names.{name}[{i}]"),
                        message: format!(
                            "{e} ({})",
                            std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default()
                        ),
                    });
                }
            }
        }
    }
}

fn name_path(name: &str) -> Result<Path, InvalidStaticName> {
    let path =
        Path::utf8(name.trim_matches('/').split('/')).map_err(|_| InvalidStaticName::EmptyLabel(name.to_string()))?;
    if path.is_empty() {
        return Err(InvalidStaticName::Empty);
    }
    Ok(path)
}

fn parse_address(address: &str) -> Result<SocketAddr, InvalidStaticName> {
    address.parse().map_err(|source| InvalidStaticName::Address { address: address.to_string(), source })
}

impl StaticNamer {
    /// The namer for `config`.
    pub fn new(config: &StaticConfig) -> Result<Self, InvalidStaticName> {
        let mut names = BTreeMap::new();
        for (name, addrs) in &config.names {
            let addrs = addrs.iter().map(|a| parse_address(a)).collect::<Result<Vec<_>, _>>()?;
            names.insert(name_path(name)?, Addr::bound(addrs));
        }
        Ok(StaticNamer { names, changes: watch::Sender::new(0) })
    }
}

impl Namer for StaticNamer {
    /// The longest configured name that is a prefix of `path` binds it.
    fn lookup(&self, path: &Path) -> Lookup {
        let found = (1..=path.len()).rev().map(|n| path.take(n)).find(|p| self.names.contains_key(p));
        match found {
            Some(id) => {
                let residual = path.drop(id.len());
                Lookup::Found(NameTree::Leaf(Name::Bound(BoundName::new(id, residual))))
            }
            None => Lookup::Found(NameTree::Neg),
        }
    }
}

impl ServiceNamer for StaticNamer {
    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn resolve(&self, id: &Path) -> watch::Receiver<Addr> {
        watch::channel(self.names.get(id).cloned().unwrap_or(Addr::Neg)).1
    }

    fn names(&self) -> Option<Vec<Path>> {
        Some(self.names.keys().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_name_wins_and_the_rest_is_residual() {
        let config: StaticConfig = serde_json::from_value(serde_json::json!({
            "names": {"web": ["127.0.0.1:1"], "web/v2": ["127.0.0.1:2", "[::1]:3"]}
        }))
        .unwrap();
        let namer = StaticNamer::new(&config).unwrap();
        let p = |s: &str| s.parse::<Path>().unwrap();
        let bound = |id: &str, rest: &str| Lookup::Found(NameTree::Leaf(Name::Bound(BoundName::new(p(id), p(rest)))));
        assert_eq!(namer.lookup(&p("/web/v2/x")), bound("/web/v2", "/x"));
        assert_eq!(namer.lookup(&p("/web/v3")), bound("/web", "/v3"));
        assert_eq!(namer.lookup(&p("/db")), Lookup::Found(NameTree::Neg));
        let addr = namer.resolve(&p("/web/v2")).borrow().clone();
        assert_eq!(addr, Addr::bound(["127.0.0.1:2".parse().unwrap(), "[::1]:3".parse().unwrap()]));
        assert_eq!(*namer.resolve(&p("/nope")).borrow(), Addr::Neg);
    }

    #[test]
    fn host_names_are_rejected_with_their_location() {
        let config = StaticConfig { prefix: default_prefix(), names: [("web".into(), vec!["web:80".into()])].into() };
        let mut problems = Vec::new();
        config.validate("namers[0]", &mut problems);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].at, "namers[0].names.web[0]");
    }
}
