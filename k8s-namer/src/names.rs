//! Paths as Linkerd 1's Kubernetes namers read them: `/<namespace>/<port>/<service>[/<label
//! value>]`, then the residual. The name segments are lower-cased; the port is a number when
//! it is all digits, else a port name.

use waymark_dtab::{Label, Path};

/// A service port, as a path names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum PortRef {
    /// A port name (a Service port's `name`).
    Name(String),
    /// A port number (a Service port's `port`).
    Number(u16),
}

/// What a path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceName {
    pub(crate) namespace: String,
    pub(crate) port: PortRef,
    pub(crate) service: String,
    /// The label value, when the namer has a label selector.
    pub(crate) label: Option<String>,
}

/// A path split into what it names, the bound id (lower-cased) and the residual.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parsed {
    pub(crate) name: ServiceName,
    pub(crate) id: Path,
    pub(crate) residual: Path,
}

/// How a namer reads its paths.
#[derive(Debug, Clone)]
pub(crate) struct PathShape {
    /// The namespace when it is not in the path (`io.l5d.k8s.ns`).
    pub(crate) namespace: Option<String>,
    /// Whether a label value follows the service name.
    pub(crate) labelled: bool,
}

impl std::fmt::Display for PortRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortRef::Name(name) => f.write_str(name),
            PortRef::Number(number) => write!(f, "{number}"),
        }
    }
}

impl PathShape {
    /// How many leading segments name the service.
    fn len(&self) -> usize {
        2 + usize::from(self.namespace.is_none()) + usize::from(self.labelled)
    }

    /// Reads `path`; `None` when it cannot name a service (too short, not UTF-8, a port number
    /// out of range, names Kubernetes would refuse): such a path is negative.
    pub(crate) fn parse(&self, path: &Path) -> Option<Parsed> {
        let len = self.len();
        if path.len() < len {
            return None;
        }
        let lowered: Vec<String> =
            path.labels()[..len].iter().map(|l| l.as_str().map(str::to_lowercase)).collect::<Option<_>>()?;
        let mut segments = lowered.iter();
        let namespace = match &self.namespace {
            Some(ns) => ns.clone(),
            None => segments.next()?.clone(),
        };
        let port = parse_port(segments.next()?)?;
        let service = segments.next()?.clone();
        let label = if self.labelled { Some(segments.next()?.clone()) } else { None };
        if !is_dns_label(&namespace) || !is_dns_1035_label(&service) {
            return None;
        }
        let id =
            Path::from_labels(lowered.iter().map(|s| Label::new(s.as_bytes())).collect::<Result<Vec<_>, _>>().ok()?);
        Some(Parsed { name: ServiceName { namespace, port, service, label }, id, residual: path.drop(len) })
    }

    /// Reads a bound id: exactly the name segments, nothing after.
    pub(crate) fn parse_id(&self, id: &Path) -> Option<ServiceName> {
        if id.len() != self.len() {
            return None;
        }
        self.parse(id).map(|parsed| parsed.name)
    }
}

fn parse_port(segment: &str) -> Option<PortRef> {
    if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
        return match segment.parse::<u32>() {
            Ok(n @ 1..=65_535) => Some(PortRef::Number(n as u16)),
            _ => None,
        };
    }
    Some(PortRef::Name(segment.to_string()))
}

/// A DNS-1123 label: what namespace names are.
pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1035 label: what Service names are (a DNS-1123 label starting with a letter).
pub(crate) fn is_dns_1035_label(s: &str) -> bool {
    is_dns_label(s) && s.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 bytes.
pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Path {
        s.parse().unwrap()
    }

    fn shape(namespace: Option<&str>, labelled: bool) -> PathShape {
        PathShape { namespace: namespace.map(str::to_string), labelled }
    }

    #[test]
    fn names_are_lower_cased_and_the_rest_is_residual() {
        let parsed = shape(None, false).parse(&p("/Prod/HTTP/Web/Users/42")).unwrap();
        assert_eq!(parsed.id, p("/prod/http/web"));
        assert_eq!(parsed.residual, p("/Users/42"));
        assert_eq!(
            parsed.name,
            ServiceName {
                namespace: "prod".into(),
                port: PortRef::Name("http".into()),
                service: "web".into(),
                label: None
            }
        );
    }

    #[test]
    fn numbers_are_ports_and_labels_follow_the_service() {
        let parsed = shape(None, true).parse(&p("/default/8080/web/V2/x")).unwrap();
        assert_eq!(parsed.name.port, PortRef::Number(8080));
        assert_eq!(parsed.name.label.as_deref(), Some("v2"));
        assert_eq!((parsed.id, parsed.residual), (p("/default/8080/web/v2"), p("/x")));
        let parsed = shape(Some("team-a"), false).parse(&p("/http/web")).unwrap();
        assert_eq!(parsed.name.namespace, "team-a");
        assert_eq!(parsed.id, p("/http/web"));
    }

    #[test]
    fn what_cannot_name_a_service_is_refused() {
        let s = shape(None, false);
        for path in
            ["/default/http", "/default/0/web", "/default/70000/web", "/de_fault/http/web", "/default/http/9web"]
        {
            assert_eq!(s.parse(&p(path)), None, "{path}");
        }
        assert!(shape(None, true).parse(&p("/default/http/web")).is_none(), "the label value is missing");
        assert_eq!(s.parse_id(&p("/default/http/web/extra")), None);
        assert!(s.parse_id(&p("/default/http/web")).is_some());
    }
}
