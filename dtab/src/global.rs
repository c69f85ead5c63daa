//! The built-in `/$/` namers: Finagle's `inet`, `fixedinet`, `fail` and `nil`, and the ones
//! Linkerd 1 ships (`io.buoyant.rinet`, the host/port rewriters and the HTTP rewriters).
//!
//! Finagle instantiates `/$/<class>` reflectively; here the classes are a fixed registry, and
//! an unknown one is a binding error. The inet namers only decide the bound id; turning a
//! host name into addresses is the job of whoever resolves the id (see [`InetTarget`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::bind::{BoundName, Lookup, Name};
use crate::path::{Label, Path};
use crate::tree::NameTree;

/// The host and port an `inet`-style bound id denotes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InetTarget {
    /// The host name or IP literal; `None` for `/$/inet/<port>`, which means this host.
    pub host: Option<String>,
    /// The port.
    pub port: u16,
    /// True for `fixedinet`, which resolves once and never again.
    pub fixed: bool,
}

/// A Java `int`, as Finagle's `IntegerString` accepts it (`-` is a label character).
fn java_int(s: &str) -> Option<i64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || digits.len() > 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<i64>().ok().filter(|n| i32::try_from(*n).is_ok())
}

fn utf8(label: &Label) -> Option<&str> {
    label.as_str()
}

fn path_of(labels: &[&str]) -> Option<Path> {
    Path::utf8(labels.iter().copied()).ok()
}

fn rewritten(path: Option<Path>) -> Lookup {
    match path {
        Some(path) => Lookup::Found(NameTree::Leaf(Name::Path(path))),
        None => Lookup::Found(NameTree::Neg),
    }
}

fn bound(path: &Path, id_len: usize) -> Lookup {
    let name = BoundName::new(path.take(id_len), path.drop(id_len));
    Lookup::Found(NameTree::Leaf(Name::Bound(name)))
}

fn port_in_range(n: i64, path: &Path) -> Result<u16, Lookup> {
    u16::try_from(n).map_err(|_| Lookup::Failed(format!("port out of range: {n} in {path}")))
}

/// Looks `path` up in the built-in namers. Paths outside `/$/` are `Neg`.
pub fn lookup(path: &Path) -> Lookup {
    let labels = path.labels();
    if labels.first().map(Label::as_bytes) != Some(b"$") {
        return Lookup::Found(NameTree::Neg);
    }
    let Some(kind) = labels.get(1) else { return Lookup::Found(NameTree::Neg) };
    let rest = path.drop(2);
    let kind_text = utf8(kind).unwrap_or("");
    match kind_text {
        "inet" | "fixedinet" => {
            let text = |i: usize| labels.get(i).and_then(utf8);
            // `/$/inet/<host>/<port>` first, then `/$/inet/<port>`.
            if let (Some(_), Some(port)) = (text(2), text(3).and_then(java_int)) {
                return match port_in_range(port, path) {
                    Ok(_) => bound(path, 4),
                    Err(failed) => failed,
                };
            }
            if let Some(port) = text(2).and_then(java_int) {
                return match port_in_range(port, path) {
                    Ok(_) => bound(path, 3),
                    Err(failed) => failed,
                };
            }
            // Finagle falls through to loading a class named `inet` here; say what is wrong.
            Lookup::Failed(format!(
                "invalid path {path}: expected /$/{kind_text}/<host>/<port> or /$/{kind_text}/<port>"
            ))
        }
        "fail" => Lookup::Found(NameTree::Fail),
        "nil" => Lookup::Found(NameTree::Empty),
        "io.buoyant.rinet" => {
            let (Some(port), Some(_host)) = (rest.labels().first().and_then(utf8), rest.labels().get(1).and_then(utf8))
            else {
                return Lookup::Found(NameTree::Neg);
            };
            match java_int(port) {
                Some(n) => match port_in_range(n, path) {
                    Ok(_) => bound(path, 4),
                    Err(failed) => failed,
                },
                None => Lookup::Failed(format!("invalid port {port:?} in {path}")),
            }
        }
        "io.buoyant.hostportPfx" => rewritten(
            host_port(&rest).and_then(|(pfx, host, port)| path_of(&[pfx, host, port]).map(|p| p.concat(&rest.drop(2)))),
        ),
        "io.buoyant.porthostPfx" => rewritten(
            host_port(&rest).and_then(|(pfx, host, port)| path_of(&[pfx, port, host]).map(|p| p.concat(&rest.drop(2)))),
        ),
        "io.buoyant.http.anyMethod" => rewritten(match rest_text(&rest, 1).as_deref() {
            Some([method]) if is_method(method) => Some(rest.drop(1)),
            _ => None,
        }),
        "io.buoyant.http.anyMethodPfx" => rewritten(match rest_text(&rest, 2).as_deref() {
            Some([pfx, method]) if is_method(method) => path_of(&[pfx]).map(|p| p.concat(&rest.drop(2))),
            _ => None,
        }),
        "io.buoyant.http.anyHost" => rewritten(match rest_text(&rest, 1).as_deref() {
            Some([host]) if is_host(host) => Some(rest.drop(1)),
            _ => None,
        }),
        "io.buoyant.http.anyHostPfx" => rewritten(match rest_text(&rest, 2).as_deref() {
            Some([pfx, host]) if is_host(host) => path_of(&[pfx]).map(|p| p.concat(&rest.drop(2))),
            _ => None,
        }),
        "io.buoyant.http.subdomainOf" => rewritten(match rest_text(&rest, 2).as_deref() {
            Some([domain, host]) if is_host(domain) && is_host(host) => {
                subdomain(domain, host).and_then(|sub| path_of(&[sub])).map(|p| p.concat(&rest.drop(2)))
            }
            _ => None,
        }),
        "io.buoyant.http.subdomainOfPfx" => rewritten(match rest_text(&rest, 3).as_deref() {
            Some([domain, pfx, host]) if is_host(domain) && is_host(host) => {
                subdomain(domain, host).and_then(|sub| path_of(&[pfx, sub])).map(|p| p.concat(&rest.drop(3)))
            }
            _ => None,
        }),
        "io.buoyant.http.domainToPath" => rewritten(match rest_text(&rest, 1).as_deref() {
            Some([host]) if is_host(host) => {
                domain_labels(host).and_then(|labels| path_of(&labels)).map(|p| p.concat(&rest.drop(1)))
            }
            _ => None,
        }),
        "io.buoyant.http.domainToPathPfx" => rewritten(match rest_text(&rest, 2).as_deref() {
            Some([pfx, host]) if is_host(host) => domain_labels(host)
                .and_then(|labels| path_of(&[&[*pfx][..], &labels].concat()))
                .map(|p| p.concat(&rest.drop(2))),
            _ => None,
        }),
        _ => unknown(kind_text, path),
    }
}

fn unknown(kind: &str, path: &Path) -> Lookup {
    Lookup::Failed(format!("Unknown namer: {kind} for path: {path}"))
}

/// The first `n` labels of `path` as text, when there are at least `n` and all are UTF-8.
fn rest_text(path: &Path, n: usize) -> Option<Vec<&str>> {
    if path.len() < n {
        return None;
    }
    path.labels()[..n].iter().map(Label::as_str).collect()
}

/// Linkerd's coarse host match: `^[A-Za-z0-9.:_-]+$`.
fn is_host(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b':' | b'_' | b'-'))
}

/// Linkerd's method match: `[A-Z]+`.
fn is_method(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_uppercase())
}

/// `host` with any `:port` removed, minus the suffix `.<domain>`, when non-empty.
fn subdomain<'a>(domain: &str, host: &'a str) -> Option<&'a str> {
    let host = match host.find(':') {
        Some(i) if i > 0 => &host[..i],
        _ => host,
    };
    let sub = host.strip_suffix(domain)?.strip_suffix('.')?;
    (!sub.is_empty()).then_some(sub)
}

/// The labels of a dotted domain, last first (`a.b.c` gives `c`, `b`, `a`). A trailing dot
/// is ignored, as Java's `split` does; an empty label anywhere else matches nothing.
fn domain_labels(host: &str) -> Option<Vec<&str>> {
    let mut parts: Vec<&str> = host.split('.').collect();
    while parts.last() == Some(&"") {
        parts.pop();
    }
    if parts.is_empty() || parts.contains(&"") {
        return None;
    }
    parts.reverse();
    Some(parts)
}

/// `<pfx>/<host>:<port>` where the port is a DNS label (RFC 1123, at most 63 characters),
/// as Linkerd's `HostColonPort` accepts it.
fn host_port(path: &Path) -> Option<(&str, &str, &str)> {
    let labels = rest_text(path, 2)?;
    let (pfx, host_port) = (labels[0], labels[1]);
    let mut parts = host_port.split(':');
    let (host, port) = (parts.next()?, parts.next()?);
    if parts.next().is_some() || host.is_empty() || !is_dns_label(port) {
        return None;
    }
    Some((pfx, host, port))
}

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && (b.len() < 2 || b[b.len() - 1] != b'-')
}

impl InetTarget {
    /// The host and port behind an inet-style bound id (`/$/inet/<host>/<port>`,
    /// `/$/inet/<port>`, `/$/fixedinet/...`, `/$/io.buoyant.rinet/<port>/<host>`), or `None`
    /// when the id is not one.
    pub fn from_id(id: &Path) -> Option<InetTarget> {
        let labels = id.utf8_labels()?;
        let port = |s: &str| java_int(s).and_then(|n| u16::try_from(n).ok());
        match labels.as_slice() {
            ["$", kind @ ("inet" | "fixedinet"), host, p] => {
                Some(InetTarget { host: Some(host.to_string()), port: port(p)?, fixed: *kind == "fixedinet" })
            }
            ["$", kind @ ("inet" | "fixedinet"), p] => {
                Some(InetTarget { host: None, port: port(p)?, fixed: *kind == "fixedinet" })
            }
            ["$", "io.buoyant.rinet", p, host] => {
                Some(InetTarget { host: Some(host.to_string()), port: port(p)?, fixed: false })
            }
            _ => None,
        }
    }

    /// The host as an IP address, when it is a literal (see [`parse_ip_literal`]).
    pub fn literal_ip(&self) -> Option<IpAddr> {
        match &self.host {
            None => Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            Some(host) => parse_ip_literal(host),
        }
    }
}

/// The id without its transformer prefix: an id starting with the element `%` loses every
/// element before the first `#` or `$` one (all of them if there is none), as namerd does
/// before resolving (`/%/io.l5d.port/4141/#/io.l5d.fs/web` is `/#/io.l5d.fs/web`). Any other id
/// is returned as it is.
pub fn strip_transformer_prefix(id: &Path) -> Path {
    let labels = id.labels();
    if labels.first().map(Label::as_bytes) != Some(b"%") {
        return id.clone();
    }
    let start = labels.iter().position(|l| matches!(l.as_bytes(), b"#" | b"$")).unwrap_or(labels.len());
    id.drop(start)
}

/// Parses an IP literal as Java's `InetAddress.getByName` does: IPv6 (with or without
/// brackets), and IPv4 in the `inet_aton` forms `a.b.c.d`, `a.b.c`, `a.b` and `a` in decimal
/// (so `127.1` is `127.0.0.1`).
pub fn parse_ip_literal(host: &str) -> Option<IpAddr> {
    let unbracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if unbracketed.contains(':') {
        return unbracketed.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    let parts: Vec<&str> = host.split('.').collect();
    if parts.is_empty()
        || parts.len() > 4
        || parts.iter().any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let nums: Vec<u64> = parts.iter().map(|p| p.parse::<u64>().ok()).collect::<Option<_>>()?;
    let (head, last) = nums.split_at(nums.len() - 1);
    if head.iter().any(|&n| n > 255) {
        return None;
    }
    let last_bits = 8 * (4 - head.len()) as u32;
    if last[0] >= 1u64 << last_bits {
        return None;
    }
    let mut value: u64 = 0;
    for (i, n) in head.iter().enumerate() {
        value |= n << (24 - 8 * i);
    }
    value |= last[0];
    Some(IpAddr::V4(Ipv4Addr::from(value as u32)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Path {
        s.parse().unwrap()
    }

    fn shown(l: Lookup) -> String {
        match l {
            Lookup::Found(tree) => tree
                .map(&mut |n| match n {
                    Name::Bound(b) => format!("bound {} {}", b.id(), b.residual()),
                    Name::Path(p) => format!("path {p}"),
                })
                .to_string(),
            Lookup::Pending => "pending".into(),
            Lookup::Failed(e) => format!("failed: {e}"),
        }
    }

    #[test]
    fn inet_forms() {
        assert_eq!(shown(lookup(&p("/$/inet/localhost/8080/rest"))), "bound /$/inet/localhost/8080 /rest");
        assert_eq!(shown(lookup(&p("/$/inet/1234/foobar"))), "bound /$/inet/1234 /foobar");
        assert_eq!(shown(lookup(&p("/$/inet/08080"))), "bound /$/inet/08080 /");
        assert!(shown(lookup(&p("/$/inet/host/99999"))).starts_with("failed: port out of range"));
        assert_eq!(
            shown(lookup(&p("/$/inet"))),
            "failed: invalid path /$/inet: expected /$/inet/<host>/<port> or /$/inet/<port>"
        );
        assert!(shown(lookup(&p("/$/inet/127.1/api"))).starts_with("failed: invalid path /$/inet/127.1/api"));
        assert_eq!(shown(lookup(&p("/$/io.buoyant.rinet/80/web/x"))), "bound /$/io.buoyant.rinet/80/web /x");
        assert_eq!(shown(lookup(&p("/\\x24/nil/x"))), "$");
        assert_eq!(shown(lookup(&p("/s/x"))), "~");
    }

    #[test]
    fn rewriting_namers_follow_linkerd() {
        let cases = [
            ("/$/io.buoyant.hostportPfx/pfx/web:http/x", "path /pfx/web/http/x"),
            ("/$/io.buoyant.porthostPfx/pfx/web:8080", "path /pfx/8080/web"),
            ("/$/io.buoyant.hostportPfx/pfx/web", "~"),
            ("/$/io.buoyant.hostportPfx/pfx/web:HTTP", "~"),
            ("/$/io.buoyant.http.domainToPathPfx/pfx/a.b.c/x", "path /pfx/c/b/a/x"),
            ("/$/io.buoyant.http.domainToPathPfx/pfx/web.svc.", "path /pfx/svc/web"),
            ("/$/io.buoyant.http.domainToPath/a.b", "path /b/a"),
            ("/$/io.buoyant.http.subdomainOfPfx/buoyant.io/pfx/foo.buoyant.io:80/r", "path /pfx/foo/r"),
            ("/$/io.buoyant.http.subdomainOfPfx/buoyant.io/pfx/buoyant.io", "~"),
            ("/$/io.buoyant.http.subdomainOf/buoyant.io/foo.buoyant.io/r", "path /foo/r"),
            ("/$/io.buoyant.http.anyMethodPfx/pfx/GET/x", "path /pfx/x"),
            ("/$/io.buoyant.http.anyMethodPfx/pfx/get/x", "~"),
            ("/$/io.buoyant.http.anyMethod/POST/svc", "path /svc"),
            ("/$/io.buoyant.http.anyHostPfx/pfx/h.io/x", "path /pfx/x"),
            ("/$/io.buoyant.http.anyHost/h.io/x", "path /x"),
        ];
        for (input, want) in cases {
            assert_eq!(shown(lookup(&p(input))), want, "{input}");
        }
    }

    #[test]
    fn ip_literals_parse_like_java() {
        assert_eq!(parse_ip_literal("127.1"), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(parse_ip_literal("10.1.2"), Some("10.1.0.2".parse().unwrap()));
        assert_eq!(parse_ip_literal("1"), Some("0.0.0.1".parse().unwrap()));
        assert_eq!(parse_ip_literal("::1"), Some("::1".parse().unwrap()));
        assert_eq!(parse_ip_literal("[::1]"), Some("::1".parse().unwrap()));
        assert_eq!(parse_ip_literal("256.1"), None);
        assert_eq!(parse_ip_literal("web"), None);
        assert_eq!(parse_ip_literal("1.2.3.4.5"), None);
    }

    #[test]
    fn inet_targets_come_from_ids() {
        let t = InetTarget::from_id(&p("/$/io.buoyant.rinet/80/web")).unwrap();
        assert_eq!((t.host.as_deref(), t.port), (Some("web"), 80));
        let t = InetTarget::from_id(&p("/$/inet/9990")).unwrap();
        assert_eq!((t.host, t.port), (None, 9990));
        assert_eq!(InetTarget::from_id(&p("/#/io.l5d.fs/web")), None);
    }
}
