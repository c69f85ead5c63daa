//! Identifiers: how a request becomes a logical name such as `/svc/web`.
//!
//! Each listener has a list of identifiers, tried in order until one names the request. The
//! kinds are Linkerd 1's (their Linkerd names are accepted as aliases), plus one for gRPC.

use http::header::HOST;
use http::uri::PathAndQuery;
use http::{HeaderName, Request, Uri, Version};
use serde::Deserialize;
use waymark_dtab::{Label, Path};

/// How a request is turned into a logical name. Every kind prepends the router's
/// `dst_prefix` (default `/svc`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum IdentifierConfig {
    /// `<prefix>/<host>`: the `Host` header (or HTTP/2 `:authority`) with any port removed.
    /// The default.
    #[default]
    Host,
    /// `<prefix>/<value>`: a header's value, verbatim, as one label (Linkerd's
    /// `io.l5d.header.token`; with `header: host` it keeps the port, as Linkerd does).
    #[serde(alias = "io.l5d.header.token")]
    HeaderToken {
        /// The header to read.
        #[serde(default = "default_token_header")]
        header: String,
    },
    /// `<prefix><value>`: a header's value parsed as a path (Linkerd's `io.l5d.header`).
    #[serde(alias = "io.l5d.header")]
    HeaderPath {
        /// The header to read.
        #[serde(default = "default_path_header")]
        header: String,
    },
    /// `<prefix>/1.1/<METHOD>/<host>[/<path>]` (Linkerd's `io.l5d.methodAndHost`).
    #[serde(alias = "io.l5d.methodAndHost")]
    MethodAndHost {
        /// Append the URL path's segments to the name.
        #[serde(default)]
        uri_in_dst: bool,
    },
    /// `<prefix>/<first N URL path segments>` (Linkerd's `io.l5d.path`).
    #[serde(alias = "io.l5d.path")]
    Path {
        /// How many segments name the destination.
        #[serde(default = "one")]
        segments: usize,
        /// Remove those segments from the forwarded request's path.
        #[serde(default)]
        consume: bool,
    },
    /// `<prefix>/<package.Service>` for gRPC requests (`/package.Service/Method`); other
    /// requests are left to the next identifier.
    Grpc,
    /// `<prefix><path>`: every request gets the same name (Linkerd's `io.l5d.static`).
    #[serde(alias = "io.l5d.static")]
    Static {
        /// The path appended to the prefix.
        path: String,
    },
}

/// A ready-to-use identifier, built from validated configuration.
#[derive(Debug, Clone)]
pub(crate) enum Identifier {
    Host { prefix: Path },
    HeaderToken { prefix: Path, header: HeaderName },
    HeaderPath { prefix: Path, header: HeaderName },
    MethodAndHost { prefix: Path, uri_in_dst: bool },
    UrlPath { prefix: Path, segments: usize, consume: bool },
    Grpc { prefix: Path },
    Static { name: Path },
}

/// What an identifier made of a request.
#[derive(Debug)]
pub(crate) enum Identified {
    /// The logical name, and the request URI to forward when the identifier rewrote it.
    Name(Path, Option<Uri>),
    /// This identifier could not name the request; the reason is for the error message.
    Unidentified(&'static str),
}

fn default_token_header() -> String {
    "host".to_string()
}

fn default_path_header() -> String {
    "l5d-name".to_string()
}

fn one() -> usize {
    1
}

impl IdentifierConfig {
    /// Problems with this identifier's settings, each prefixed with `at`.
    pub(crate) fn problems(&self, at: &str, out: &mut Vec<String>) {
        match self {
            IdentifierConfig::HeaderToken { header } | IdentifierConfig::HeaderPath { header }
                if HeaderName::from_bytes(header.as_bytes()).is_err() =>
            {
                out.push(format!("{at}.header: {header:?} is not a valid header name"));
            }
            IdentifierConfig::Path { segments, .. } if *segments == 0 => {
                out.push(format!("{at}.segments: must be at least 1"));
            }
            IdentifierConfig::Static { path } => {
                if let Err(e) = path.parse::<Path>() {
                    out.push(format!("{at}.path: {path:?} is not a path: {e}"));
                }
            }
            _ => {}
        }
    }

    /// The identifier, with names under `prefix`. Only called on validated configuration.
    pub(crate) fn build(&self, prefix: &Path) -> Identifier {
        let header = |h: &str| HeaderName::from_bytes(h.as_bytes()).unwrap_or(HOST);
        match self {
            IdentifierConfig::Host => Identifier::Host { prefix: prefix.clone() },
            IdentifierConfig::HeaderToken { header: h } => {
                Identifier::HeaderToken { prefix: prefix.clone(), header: header(h) }
            }
            IdentifierConfig::HeaderPath { header: h } => {
                Identifier::HeaderPath { prefix: prefix.clone(), header: header(h) }
            }
            IdentifierConfig::MethodAndHost { uri_in_dst } => {
                Identifier::MethodAndHost { prefix: prefix.clone(), uri_in_dst: *uri_in_dst }
            }
            IdentifierConfig::Path { segments, consume } => {
                Identifier::UrlPath { prefix: prefix.clone(), segments: *segments, consume: *consume }
            }
            IdentifierConfig::Grpc => Identifier::Grpc { prefix: prefix.clone() },
            IdentifierConfig::Static { path } => {
                Identifier::Static { name: prefix.concat(&path.parse::<Path>().unwrap_or_default()) }
            }
        }
    }
}

/// The request's authority: HTTP/2's `:authority`, else the `Host` header.
pub(crate) fn authority<B>(req: &Request<B>) -> Option<&str> {
    match req.uri().authority() {
        Some(a) => Some(a.as_str()),
        None => req.headers().get(HOST).and_then(|v| v.to_str().ok()),
    }
}

/// `host` without a trailing `:port` (IPv6 literals keep their brackets).
fn strip_port(host: &str) -> &str {
    if let Some(end) = host.strip_prefix('[').and_then(|rest| rest.find(']')) {
        return &host[..end + 2];
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

fn label(bytes: &[u8]) -> Option<Label> {
    Label::new(bytes.to_vec()).ok()
}

/// The non-empty segments of a URL path.
fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers().get(http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

impl Identifier {
    /// Names `req`, or says why this identifier cannot.
    pub(crate) fn identify<B>(&self, req: &Request<B>) -> Identified {
        match self {
            Identifier::Host { prefix } => match authority(req).map(strip_port).filter(|h| !h.is_empty()) {
                Some(host) => match label(host.as_bytes()) {
                    Some(l) => Identified::Name(prefix.push(l), None),
                    None => Identified::Unidentified("the Host header is empty"),
                },
                None => Identified::Unidentified("the request has no Host header"),
            },
            Identifier::HeaderToken { prefix, header } => {
                let value = if *header == HOST {
                    authority(req).map(str::as_bytes)
                } else {
                    req.headers().get(header).map(|v| v.as_bytes())
                };
                match value.and_then(label) {
                    Some(l) => Identified::Name(prefix.push(l), None),
                    None => Identified::Unidentified("the identifying header is missing or empty"),
                }
            }
            Identifier::HeaderPath { prefix, header } => {
                match req.headers().get(header).and_then(|v| v.to_str().ok()).map(str::parse::<Path>) {
                    Some(Ok(path)) if !path.is_empty() => Identified::Name(prefix.concat(&path), None),
                    Some(_) => Identified::Unidentified("the identifying header is not a path"),
                    None => Identified::Unidentified("the identifying header is missing"),
                }
            }
            Identifier::MethodAndHost { prefix, uri_in_dst } => {
                let version = match req.version() {
                    Version::HTTP_10 => "1.0",
                    _ => "1.1",
                };
                let mut labels: Vec<Label> = prefix.labels().to_vec();
                labels.extend(label(version.as_bytes()));
                labels.extend(label(req.method().as_str().as_bytes()));
                if req.version() != Version::HTTP_10 {
                    match authority(req).filter(|h| !h.is_empty()) {
                        Some(host) => labels.extend(label(host.to_ascii_lowercase().as_bytes())),
                        None => return Identified::Unidentified("the request has no Host header"),
                    }
                }
                if *uri_in_dst {
                    labels.extend(segments(req.uri().path()).filter_map(|s| label(s.as_bytes())));
                }
                Identified::Name(Path::from_labels(labels), None)
            }
            Identifier::UrlPath { prefix, segments: n, consume } => {
                let path = req.uri().path();
                let taken: Vec<&str> = segments(path).take(*n).collect();
                if taken.len() < *n {
                    return Identified::Unidentified("the URL path has too few segments");
                }
                let mut labels: Vec<Label> = prefix.labels().to_vec();
                labels.extend(taken.iter().filter_map(|s| label(s.as_bytes())));
                let rewritten = if *consume { consumed(req.uri(), *n) } else { None };
                Identified::Name(Path::from_labels(labels), rewritten)
            }
            Identifier::Grpc { prefix } => {
                if !is_grpc(req) {
                    return Identified::Unidentified("the request is not a gRPC call");
                }
                match segments(req.uri().path()).next().and_then(|s| label(s.as_bytes())) {
                    Some(service) => Identified::Name(prefix.push(service), None),
                    None => Identified::Unidentified("the gRPC path names no service"),
                }
            }
            Identifier::Static { name } => Identified::Name(name.clone(), None),
        }
    }
}

/// `uri` without its first `n` path segments, keeping the query.
fn consumed(uri: &Uri, n: usize) -> Option<Uri> {
    let path = uri.path();
    let mut rest = path;
    for _ in 0..n {
        rest = rest.trim_start_matches('/');
        rest = rest.find('/').map_or("", |i| &rest[i..]);
    }
    let rest = if rest.is_empty() { "/" } else { rest };
    let pq = match uri.query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_string(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(pq).ok()?);
    Uri::from_parts(parts).ok()
}

/// Names `req` with the first identifier that can; otherwise the last one's reason.
pub(crate) fn identify<B>(identifiers: &[Identifier], req: &Request<B>) -> Identified {
    let mut last = Identified::Unidentified("no identifier is configured");
    for identifier in identifiers {
        match identifier.identify(req) {
            found @ Identified::Name(..) => return found,
            unidentified => last = unidentified,
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix() -> Path {
        "/svc".parse().unwrap()
    }

    fn name(id: &Identifier, req: Request<()>) -> String {
        match id.identify(&req) {
            Identified::Name(p, _) => p.to_string(),
            Identified::Unidentified(why) => format!("unidentified: {why}"),
        }
    }

    fn req(uri: &str, host: Option<&str>) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header(HOST, h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn host_strips_the_port_and_token_keeps_it() {
        let host = IdentifierConfig::Host.build(&prefix());
        assert_eq!(name(&host, req("/x", Some("web:8080"))), "/svc/web");
        assert_eq!(name(&host, req("/x", Some("[::1]:80"))), Path::utf8(["svc", "[::1]"]).unwrap().to_string());
        assert_eq!(name(&host, req("http://api.example/x", None)), "/svc/api.example");
        assert!(name(&host, req("/x", None)).starts_with("unidentified"));
        let token = IdentifierConfig::HeaderToken { header: "host".into() }.build(&prefix());
        assert_eq!(name(&token, req("/x", Some("web:8080"))), "/svc/web:8080");
    }

    #[test]
    fn method_and_host_and_path_identifiers() {
        let mh = IdentifierConfig::MethodAndHost { uri_in_dst: true }.build(&prefix());
        assert_eq!(name(&mh, req("/a/b?q=1", Some("Web"))), "/svc/1.1/GET/web/a/b");
        let path = IdentifierConfig::Path { segments: 2, consume: true }.build(&prefix());
        let r = req("/users/v2/list?x=y", Some("h"));
        match path.identify(&r) {
            Identified::Name(p, Some(uri)) => {
                assert_eq!(p.to_string(), "/svc/users/v2");
                assert_eq!(uri.to_string(), "/list?x=y");
            }
            other => panic!("{other:?}"),
        }
        assert!(name(&path, req("/only", Some("h"))).starts_with("unidentified"));
    }

    #[test]
    fn grpc_and_header_path_and_lists() {
        let grpc = IdentifierConfig::Grpc.build(&prefix());
        let mut r = req("/helloworld.Greeter/SayHello", Some("h"));
        r.headers_mut().insert(http::header::CONTENT_TYPE, "application/grpc".parse().unwrap());
        assert_eq!(name(&grpc, r), "/svc/helloworld.Greeter");
        let header = IdentifierConfig::HeaderPath { header: "l5d-name".into() }.build(&prefix());
        let mut r = req("/", None);
        r.headers_mut().insert("l5d-name", "/a/b".parse().unwrap());
        assert_eq!(name(&header, r), "/svc/a/b");
        let list = [grpc, IdentifierConfig::Host.build(&prefix())];
        match identify(&list, &req("/x", Some("web"))) {
            Identified::Name(p, _) => assert_eq!(p.to_string(), "/svc/web"),
            other => panic!("{other:?}"),
        }
    }
}
