//! The namer's HTTP API as the CLI uses it: namerd's `/api/1/dtabs` and `/api/1/delegate`,
//! plus what only our namer offers (history, the names bound in a namespace, binding with a
//! given dtab alone).
//!
//! Every request goes through [`Client::call`], which turns a transport failure into
//! [`Exit::Unreachable`]; each operation then maps the statuses it expects to the exit
//! statuses in [`crate::exit`].

use std::path::{Path as FsPath, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use percent_encoding::{AsciiSet, CONTROLS, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use ureq::http::StatusCode;
use waymark_dtab::Dtab;
use waymark_dtab::json::{BoundTreeJson, DelegateJson, DentryJson, dtab_from_json};

use crate::exit::{Exit, Failure};

/// Where the namer is when nothing says otherwise: namerd's default HTTP interface.
pub const DEFAULT_BASE_URL: &str = "http://127.0.0.1:4180";

/// The environment variables that name the namer, in order of precedence.
pub const BASE_URL_VARIABLES: [&str; 2] = ["WAYMARK_NAMER_URL", "NAMERCTL_BASE_URL"];

/// namerctl's configuration files, searched in the working directory and its parents.
const NAMERCTL_CONFIG_FILES: [&str; 3] = [".namerctl.yaml", ".namerctl.yml", ".namerctl.json"];

/// Characters escaped in a namespace inside a URL path: all but RFC 3986's unreserved ones
/// and `/`, which namerd takes as part of the namespace and namerctl sends unescaped.
const NAMESPACE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~').remove(b'/');

/// Characters escaped in a query value. `/` stays readable; `#`, `&`, `=`, `*`, spaces and
/// the rest of the dtab syntax are escaped.
const QUERY_VALUE: &AsciiSet = NAMESPACE;

/// The target of a `Link` header value's `rel="next"` link, as a path on the namer.
fn next_link(value: &str) -> Option<String> {
    value.split(',').find_map(|link| {
        let (target, params) = link.trim().split_once(';')?;
        let is_next = params.split(';').any(|p| matches!(p.trim(), "rel=\"next\"" | "rel=next"));
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        (is_next && target.starts_with('/')).then(|| target.to_string())
    })
}

/// Characters escaped in the history headers: the server percent-decodes them as UTF-8, and
/// header values cannot hold control characters (non-ASCII is always escaped).
const HEADER_TEXT: &AsciiSet = &CONTROLS.add(b'%');

/// The `waymark-author` and `waymark-message` request headers of our namer.
const AUTHOR_HEADER: &str = "waymark-author";
const MESSAGE_HEADER: &str = "waymark-message";

/// How to reach the namer; shared by every command that talks to it.
#[derive(Debug, Clone, Args)]
pub struct NamerOptions {
    /// The namer's base URL, such as http://namerd.example.com:4180 (a path prefix is kept)
    ///
    /// Without it: $WAYMARK_NAMER_URL, then $NAMERCTL_BASE_URL, then `base-url` in a
    /// .namerctl.yaml (or .yml, .json) in this directory or a parent, then
    /// http://127.0.0.1:4180.
    #[arg(long, global = true, value_name = "URL")]
    pub base_url: Option<String>,
    /// Seconds to wait for the namer to connect and to answer.
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 30)]
    pub timeout: u64,
    /// CA certificates (PEM) to trust for an https namer, instead of the usual roots
    #[arg(long, global = true, value_name = "FILE", env = "WAYMARK_NAMER_CA")]
    pub ca_cert: Option<PathBuf>,
    /// A client certificate chain (PEM), for a namer that requires one; with --key
    #[arg(long, global = true, value_name = "FILE", env = "WAYMARK_NAMER_CERT", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM)
    #[arg(long, global = true, value_name = "FILE", env = "WAYMARK_NAMER_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
}

impl NamerOptions {
    /// The TLS settings the options ask for, or `None` for the defaults.
    fn tls(&self) -> Result<Option<ureq::tls::TlsConfig>, Failure> {
        use ureq::tls::{ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};
        if self.ca_cert.is_none() && self.cert.is_none() {
            return Ok(None);
        }
        let bad = |path: &FsPath, why: &dyn std::fmt::Display| {
            Failure::new(Exit::Error, format!("{}: {why}", path.display()))
        };
        let read = |path: &FsPath| std::fs::read(path).map_err(|e| bad(path, &e));
        let certs = |path: &FsPath| -> Result<Vec<ureq::tls::Certificate<'static>>, Failure> {
            let pem = read(path)?;
            let mut certs = Vec::new();
            for item in ureq::tls::parse_pem(&pem) {
                match item {
                    Ok(PemItem::Certificate(cert)) => certs.push(cert),
                    Ok(_) => {}
                    Err(e) => return Err(bad(path, &e)),
                }
            }
            if certs.is_empty() {
                return Err(bad(path, &"no certificate found"));
            }
            Ok(certs)
        };
        let mut config = TlsConfig::builder();
        if let Some(ca) = &self.ca_cert {
            config = config.root_certs(RootCerts::new_with_certs(&certs(ca)?));
        }
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            let private = PrivateKey::from_pem(&read(key)?).map_err(|e| bad(key, &e))?;
            config = config.client_cert(Some(ClientCert::new_with_certs(&certs(cert)?, private)));
        }
        Ok(Some(config.build()))
    }
}

/// A validated base URL: `http` or `https`, a host, and an optional path prefix, without a
/// trailing `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl(String);

/// Who made a change and why, recorded in our namer's history (namerd ignores both).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeNote {
    /// The author, if any.
    pub author: Option<String>,
    /// The reason, if any.
    pub message: Option<String>,
}

/// A dtab and the version it was read at (namerd always sends one; `None` if a server
/// did not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The `ETag`, exactly as the server sent it.
    pub version: Option<String>,
    /// The dtab.
    pub dtab: Dtab,
}

/// One entry of `/api/1/dtabs/<ns>/history`, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct HistoryEntry {
    /// The version the change produced, as an ETag.
    pub version: String,
    /// The dtab after the change; `None` when the change deleted the namespace.
    pub dtab: Option<Vec<DentryJson>>,
    /// When, in RFC 3339.
    pub at: String,
    /// Who, if recorded.
    #[serde(default)]
    pub author: Option<String>,
    /// Why, if recorded.
    #[serde(default)]
    pub message: Option<String>,
}

/// A namespace's history: the response body as sent, and parsed.
#[derive(Debug, Clone)]
pub struct History {
    /// The response body (the JSON array), byte for byte.
    pub raw: String,
    /// The entries, newest first.
    pub entries: Vec<HistoryEntry>,
}

/// The outcome of binding one name.
#[derive(Debug, Clone, PartialEq)]
pub enum Bound {
    /// The bound tree.
    Tree(BoundTreeJson),
    /// Binding failed (HTTP 500), with the namer's reason.
    Failed(String),
}

/// A delegation tree as the namer sent it, and parsed.
#[derive(Debug, Clone)]
pub struct Delegation {
    /// The response body, byte for byte (namerd's JSON).
    pub raw: String,
    /// The parsed tree.
    pub tree: DelegateJson,
}

/// An HTTP client for one namer.
#[derive(Debug)]
pub struct Client {
    base: BaseUrl,
    agent: ureq::Agent,
}

/// A response: status, `ETag` and body.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    etag: Option<String>,
    /// The `rel="next"` target of a `Link` header: the next page of a paged answer.
    next: Option<String>,
    body: String,
}

/// The largest answer read from a namer. A history page, a delegation or a dtab is far
/// smaller; past it the answer is refused as too large, not mistaken for a broken connection.
const MAX_RESPONSE_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone, Copy)]
enum Method {
    Get,
    Post,
    Put,
    Delete,
}

#[derive(Debug, Deserialize)]
struct NamerctlConfig {
    #[serde(rename = "base-url")]
    base_url: Option<String>,
}

impl BaseUrl {
    /// The base URL from, in order: the `--base-url` flag, the environment (see
    /// [`BASE_URL_VARIABLES`]), a namerctl configuration file in `dir` or a parent, and
    /// [`DEFAULT_BASE_URL`]. `env` looks a variable up; empty values count as unset.
    pub fn resolve(
        flag: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
        dir: Option<&FsPath>,
    ) -> Result<BaseUrl, Failure> {
        if let Some(flag) = flag {
            return flag.parse();
        }
        for variable in BASE_URL_VARIABLES {
            if let Some(value) = env(variable).filter(|v| !v.trim().is_empty()) {
                return value.parse().map_err(|e: Failure| Failure::new(e.exit, format!("${variable}: {}", e.message)));
            }
        }
        if let Some(dir) = dir
            && let Some((file, value)) = namerctl_config(dir)?
        {
            return value.parse().map_err(|e: Failure| Failure::new(e.exit, format!("{file}: {}", e.message)));
        }
        DEFAULT_BASE_URL.parse()
    }

    /// The URL of `path` (which starts with `/`) under this base.
    pub fn join(&self, path: &str) -> String {
        format!("{}{path}", self.0)
    }

    /// The base URL as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for BaseUrl {
    type Err = Failure;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.is_empty() {
            return Err(Failure::new(Exit::Error, "empty base URL"));
        }
        let invalid =
            || Failure::new(Exit::Error, format!("invalid base URL: {text} (expected http://host[:port][/prefix])"));
        let (scheme, rest) = text.split_once("://").ok_or_else(invalid)?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(invalid());
        }
        if rest.contains(['?', '#']) || rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid());
        }
        let (authority, prefix) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.is_empty() || authority.starts_with(':') {
            return Err(invalid());
        }
        Ok(BaseUrl(format!("{scheme}://{authority}{}", prefix.trim_end_matches('/'))))
    }
}

impl std::fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The `base-url` of the nearest namerctl configuration file, with the file's name.
fn namerctl_config(dir: &FsPath) -> Result<Option<(String, String)>, Failure> {
    for dir in dir.ancestors() {
        for name in NAMERCTL_CONFIG_FILES {
            let file = dir.join(name);
            let Ok(text) = std::fs::read_to_string(&file) else { continue };
            let shown = file.display().to_string();
            let config: NamerctlConfig = if name.ends_with(".json") {
                serde_json::from_str(&text).map_err(|e| Failure::new(Exit::Error, format!("{shown}: {e}")))?
            } else {
                serde_saphyr::from_str(&text).map_err(|e| Failure::new(Exit::Error, format!("{shown}: {e}")))?
            };
            if let Some(url) = config.base_url.filter(|u| !u.trim().is_empty()) {
                return Ok(Some((shown, url)));
            }
        }
    }
    Ok(None)
}

impl ChangeNote {
    /// A note with `message`, and `author` or else the user's login name.
    pub fn new(author: Option<String>, message: Option<String>) -> Self {
        let author = match author {
            Some(a) => Some(a),
            None => ["USER", "LOGNAME", "USERNAME"].iter().find_map(|v| std::env::var(v).ok()),
        };
        ChangeNote {
            author: author.filter(|a| !a.trim().is_empty()),
            message: message.filter(|m| !m.trim().is_empty()),
        }
    }

    fn headers(&self) -> Vec<(&'static str, String)> {
        let encode = |text: &str| utf8_percent_encode(text, HEADER_TEXT).to_string();
        let mut headers = Vec::new();
        if let Some(author) = &self.author {
            headers.push((AUTHOR_HEADER, encode(author)));
        }
        if let Some(message) = &self.message {
            headers.push((MESSAGE_HEADER, encode(message)));
        }
        headers
    }
}

impl Reply {
    /// `412 Precondition Failed`, as namerctl reports a status.
    fn status_line(&self) -> String {
        match self.status.canonical_reason() {
            Some(reason) => format!("{} {reason}", self.status.as_u16()),
            None => self.status.as_u16().to_string(),
        }
    }

    /// A failure for a status the operation did not expect: the status line and what the
    /// server said (namerctl drops the body; it often says exactly what is wrong).
    fn unexpected(&self) -> Failure {
        let (first, rest) = split_body(&self.body);
        let message = match first {
            Some(first) => format!("unexpected response: {}: {first}", self.status_line()),
            None => format!("unexpected response: {}", self.status_line()),
        };
        with_rest(Failure::new(Exit::Error, message), rest)
    }

    /// A 400: the server's reason (with its caret excerpt, if any), which namerctl hides.
    fn rejected(&self) -> Failure {
        let (first, rest) = split_body(&self.body);
        let message = match first {
            Some(first) => format!("the namer answered {}: {first}", self.status_line()),
            None => format!("the namer answered {}", self.status_line()),
        };
        with_rest(Failure::new(Exit::Invalid, message), rest)
    }
}

/// The first non-empty line of a body, and the lines after it.
fn split_body(body: &str) -> (Option<&str>, Option<&str>) {
    let body = body.trim_end();
    let body = body.trim_start_matches(['\r', '\n']);
    if body.is_empty() {
        return (None, None);
    }
    match body.split_once('\n') {
        Some((first, rest)) if !rest.trim().is_empty() => (Some(first.trim_end()), Some(rest)),
        Some((first, _)) => (Some(first.trim_end()), None),
        None => (Some(body), None),
    }
}

fn with_rest(failure: Failure, rest: Option<&str>) -> Failure {
    match rest {
        Some(rest) => failure.with_detail(rest),
        None => failure,
    }
}

/// A namespace in a URL path.
fn segment(ns: &str) -> String {
    utf8_percent_encode(ns, NAMESPACE).to_string()
}

/// A query parameter value.
fn query(value: &str) -> String {
    utf8_percent_encode(value, QUERY_VALUE).to_string()
}

fn not_found(ns: &str) -> Failure {
    Failure::new(Exit::NotFound, format!("namespace {ns} not found (404 Not Found)"))
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &str, what: &str) -> Result<T, Failure> {
    serde_json::from_str(body)
        .map_err(|e| Failure::new(Exit::Error, format!("the namer sent {what} that is not valid: {e}")))
}

impl Client {
    /// A client for the namer at `base`, giving up on a connection or an answer after
    /// `timeout`.
    pub fn new(base: BaseUrl, timeout: Duration, tls: Option<ureq::tls::TlsConfig>) -> Self {
        let mut config = ureq::Agent::config_builder();
        if let Some(tls) = tls {
            config = config.tls_config(tls);
        }
        let agent = config
            .http_status_as_error(false)
            .timeout_resolve(Some(timeout))
            .timeout_connect(Some(timeout))
            .timeout_send_request(Some(timeout))
            .timeout_send_body(Some(timeout))
            .timeout_recv_response(Some(timeout))
            .timeout_recv_body(Some(timeout))
            .max_redirects(0)
            .user_agent(concat!("waymark/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Client { base, agent }
    }

    /// A client from the command line's options and the environment.
    pub fn from_options(options: &NamerOptions) -> Result<Self, Failure> {
        let cwd = std::env::current_dir().ok();
        let base = BaseUrl::resolve(options.base_url.as_deref(), &|v| std::env::var(v).ok(), cwd.as_deref())?;
        Ok(Client::new(base, Duration::from_secs(options.timeout.max(1)), options.tls()?))
    }

    /// The namer's base URL.
    pub fn base(&self) -> &BaseUrl {
        &self.base
    }

    /// Sends one request. A namer that cannot be reached, or does not answer in time, is
    /// [`Exit::Unreachable`]; any HTTP status is a [`Reply`].
    fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Option<(&str, &str)>,
    ) -> Result<Reply, Failure> {
        let url = self.base.join(path);
        fn with<B>(mut request: ureq::RequestBuilder<B>, headers: &[(&str, String)]) -> ureq::RequestBuilder<B> {
            for (name, value) in headers {
                request = request.header(*name, value);
            }
            request
        }
        let result = match (method, body) {
            (Method::Get, _) => with(self.agent.get(&url), headers).call(),
            (Method::Delete, _) => with(self.agent.delete(&url), headers).call(),
            (Method::Post, body) => {
                let (content_type, body) = body.unwrap_or(("application/dtab", ""));
                with(self.agent.post(&url), headers).header("content-type", content_type).send(body)
            }
            (Method::Put, body) => {
                let (content_type, body) = body.unwrap_or(("application/dtab", ""));
                with(self.agent.put(&url), headers).header("content-type", content_type).send(body)
            }
        };
        let mut response = result.map_err(|e| self.transport_failure(e))?;
        let status = response.status();
        let etag = response.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_string);
        let next = response.headers().get_all("link").iter().filter_map(|v| v.to_str().ok()).find_map(next_link);
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .read_to_string()
            .map_err(|e| self.transport_failure(e))?;
        Ok(Reply { status, etag, next, body })
    }

    fn transport_failure(&self, error: ureq::Error) -> Failure {
        let why = match &error {
            ureq::Error::Io(e) => match e.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => "timed out".to_string(),
                _ => e.to_string(),
            },
            ureq::Error::Timeout(_) => "timed out".to_string(),
            ureq::Error::HostNotFound => "host not found".to_string(),
            ureq::Error::ConnectionFailed => "connection failed".to_string(),
            ureq::Error::BadUri(uri) => {
                return Failure::new(Exit::Error, format!("invalid URL {uri}"));
            }
            ureq::Error::Http(e) => return Failure::new(Exit::Error, format!("invalid request: {e}")),
            ureq::Error::BodyExceedsLimit(limit) => {
                return Failure::new(
                    Exit::Error,
                    format!(
                        "the namer at {} answered with more than {} MiB, more than this tool reads",
                        self.base,
                        limit / (1024 * 1024)
                    ),
                );
            }
            other => other.to_string(),
        };
        Failure::new(Exit::Unreachable, format!("cannot reach the namer at {}: {why}", self.base))
    }

    /// `GET /api/1/dtabs`: the namespace names, in the server's order.
    pub fn list(&self) -> Result<Vec<String>, Failure> {
        let reply = self.call(Method::Get, "/api/1/dtabs", &[("accept", "application/json".into())], None)?;
        if reply.status != StatusCode::OK {
            return Err(reply.unexpected());
        }
        parse_json(&reply.body, "a namespace list")
    }

    /// `GET /api/1/dtabs/<ns>` as JSON, with its version.
    pub fn get(&self, ns: &str) -> Result<Versioned, Failure> {
        let path = format!("/api/1/dtabs/{}", segment(ns));
        let reply = self.call(Method::Get, &path, &[("accept", "application/json".into())], None)?;
        match reply.status {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Err(not_found(ns)),
            _ => return Err(reply.unexpected()),
        }
        let dentries: Vec<DentryJson> = parse_json(&reply.body, "a dtab")?;
        let dtab = dtab_from_json(&dentries)
            .map_err(|e| Failure::new(Exit::Error, format!("the namer sent a dtab that does not parse: {e}")))?;
        Ok(Versioned { version: reply.etag.filter(|v| !v.is_empty()), dtab })
    }

    /// `POST /api/1/dtabs/<ns>`: creates a namespace. The new version, if the server says.
    pub fn create(&self, ns: &str, dtab: &Dtab, note: &ChangeNote) -> Result<Option<String>, Failure> {
        let path = format!("/api/1/dtabs/{}", segment(ns));
        let body = dtab.to_string();
        let reply = self.call(Method::Post, &path, &note.headers(), Some(("application/dtab", &body)))?;
        match reply.status {
            StatusCode::OK | StatusCode::CREATED | StatusCode::NO_CONTENT => Ok(reply.etag),
            StatusCode::CONFLICT => {
                Err(Failure::new(Exit::Exists, format!("namespace {ns} already exists (409 Conflict)")))
            }
            StatusCode::BAD_REQUEST => Err(reply.rejected()),
            _ => Err(reply.unexpected()),
        }
    }

    /// `PUT /api/1/dtabs/<ns>`: replaces the dtab; with `if_match`, only if that is still the
    /// current version. The new version, if the server says.
    pub fn update(
        &self,
        ns: &str,
        dtab: &Dtab,
        if_match: Option<&str>,
        note: &ChangeNote,
    ) -> Result<Option<String>, Failure> {
        let path = format!("/api/1/dtabs/{}", segment(ns));
        let body = dtab.to_string();
        let mut headers = note.headers();
        if let Some(version) = if_match {
            headers.push(("if-match", version.to_string()));
        }
        let reply = self.call(Method::Put, &path, &headers, Some(("application/dtab", &body)))?;
        match reply.status {
            StatusCode::OK | StatusCode::CREATED | StatusCode::NO_CONTENT => Ok(reply.etag),
            StatusCode::NOT_FOUND => Err(not_found(ns)),
            StatusCode::PRECONDITION_FAILED => Err(Failure::new(
                Exit::Conflict,
                format!(
                    "namespace {ns} is no longer at version {} (412 Precondition Failed); nothing was changed",
                    if_match.unwrap_or("?")
                ),
            )),
            StatusCode::BAD_REQUEST => Err(reply.rejected()),
            _ => Err(reply.unexpected()),
        }
    }

    /// `DELETE /api/1/dtabs/<ns>`.
    pub fn delete(&self, ns: &str, note: &ChangeNote) -> Result<(), Failure> {
        let path = format!("/api/1/dtabs/{}", segment(ns));
        let reply = self.call(Method::Delete, &path, &note.headers(), None)?;
        match reply.status {
            StatusCode::OK | StatusCode::NO_CONTENT => Ok(()),
            StatusCode::NOT_FOUND => Err(not_found(ns)),
            _ => Err(reply.unexpected()),
        }
    }

    /// `GET /api/1/dtabs/<ns>/history`, newest first. namerd has no history: it answers 404,
    /// as for a namespace called `<ns>/history`, so a 404 is checked against the namespace.
    /// A long history comes in pages, each naming the next in a `Link` header; every page is
    /// read, and `raw` is then one array of every entry.
    pub fn history(&self, ns: &str) -> Result<History, Failure> {
        let path = format!("/api/1/dtabs/{}/history", segment(ns));
        let reply = self.call(Method::Get, &path, &[("accept", "application/json".into())], None)?;
        match reply.status {
            StatusCode::OK => {
                let mut entries: Vec<HistoryEntry> = parse_json(&reply.body, "a history")?;
                let (mut raw, mut next) = (reply.body, reply.next);
                let mut pages: Vec<serde_json::Value> = Vec::new();
                while let Some(page) = next.take() {
                    if pages.is_empty() {
                        pages.extend(parse_json::<Vec<serde_json::Value>>(&raw, "a history")?);
                    }
                    let more = self.call(Method::Get, &page, &[("accept", "application/json".into())], None)?;
                    if more.status != StatusCode::OK {
                        return Err(more.unexpected());
                    }
                    entries.extend(parse_json::<Vec<HistoryEntry>>(&more.body, "a history")?);
                    pages.extend(parse_json::<Vec<serde_json::Value>>(&more.body, "a history")?);
                    next = more.next;
                }
                if !pages.is_empty() {
                    raw = format!("{}\n", serde_json::Value::Array(pages));
                }
                Ok(History { raw, entries })
            }
            // A namespace that never existed, or a namer without history: ask which.
            StatusCode::NOT_FOUND => match self.get(ns) {
                Ok(_) => Err(Failure::new(
                    Exit::Error,
                    format!("the namer at {} keeps no history of dtabs (namerd does not)", self.base),
                )),
                Err(failure) if failure.exit == Exit::NotFound => Err(Failure::new(
                    Exit::NotFound,
                    format!("no history for namespace {ns}: it does not exist (404 Not Found)"),
                )),
                Err(failure) => Err(failure),
            },
            _ => Err(reply.unexpected()),
        }
    }

    /// `GET /api/1/bound-names/<ns>`: the logical names the namer has bound in `ns`.
    pub fn bound_names(&self, ns: &str) -> Result<Vec<String>, Failure> {
        let path = format!("/api/1/bound-names/{}", segment(ns));
        let reply = self.call(Method::Get, &path, &[("accept", "application/json".into())], None)?;
        match reply.status {
            StatusCode::OK => parse_json(&reply.body, "a list of bound names"),
            StatusCode::NOT_FOUND => Err(Failure::new(
                Exit::Error,
                format!(
                    "the namer at {} does not list the names bound in a namespace (404 Not Found on \
                     /api/1/bound-names/{ns}; namerd does not); a dry run needs Waymark's namer",
                    self.base
                ),
            )),
            _ => Err(reply.unexpected()),
        }
    }

    /// Binds `path` with the namespace's stored dtab (`Some(ns)`), or with `dtab` alone
    /// (`None`): `GET /api/1/bind/<ns>?path=` or `GET /api/1/bind?path=&dtab=`.
    pub fn bind(&self, ns: Option<&str>, path: &str, dtab: Option<&Dtab>) -> Result<Bound, Failure> {
        let mut url = match ns {
            Some(ns) => format!("/api/1/bind/{}?path={}", segment(ns), query(path)),
            None => format!("/api/1/bind?path={}", query(path)),
        };
        if let Some(dtab) = dtab {
            url.push_str("&dtab=");
            url.push_str(&query(&dtab.to_string()));
        }
        let reply = self.call(Method::Get, &url, &[], None)?;
        match reply.status {
            StatusCode::OK => Ok(Bound::Tree(parse_json(&reply.body, "a bound tree")?)),
            StatusCode::INTERNAL_SERVER_ERROR => Ok(Bound::Failed(reply.body.trim().to_string())),
            StatusCode::NOT_FOUND if ns.is_none() => Err(Failure::new(
                Exit::Error,
                format!(
                    "the namer at {} cannot bind with a given dtab alone (404 Not Found on /api/1/bind; \
                     namerd cannot); a dry run needs Waymark's namer",
                    self.base
                ),
            )),
            StatusCode::BAD_REQUEST => Err(reply.rejected()),
            _ => Err(reply.unexpected()),
        }
    }

    /// `GET /api/1/delegate/<ns>?path=&dtab=`: how `path` resolves through the namespace's
    /// dtab followed by `extra`.
    pub fn delegate(&self, ns: &str, path: &str, extra: Option<&Dtab>) -> Result<Delegation, Failure> {
        let mut url = format!("/api/1/delegate/{}?path={}", segment(ns), query(path));
        if let Some(extra) = extra {
            url.push_str("&dtab=");
            url.push_str(&query(&extra.to_string()));
        }
        let reply = self.call(Method::Get, &url, &[("accept", "application/json".into())], None)?;
        match reply.status {
            StatusCode::OK => {
                let tree = parse_json(&reply.body, "a delegation tree")?;
                Ok(Delegation { raw: reply.body, tree })
            }
            StatusCode::BAD_REQUEST => Err(reply.rejected()),
            _ => Err(reply.unexpected()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn base_urls_keep_their_prefix_and_lose_a_trailing_slash() {
        let url: BaseUrl = "http://namerd.example.com:4180/".parse().unwrap();
        assert_eq!(url.join("/api/1/dtabs"), "http://namerd.example.com:4180/api/1/dtabs");
        let url: BaseUrl = "HTTPS://gw.example.com/namerd/".parse().unwrap();
        assert_eq!(url.join("/api/1/dtabs/x"), "https://gw.example.com/namerd/api/1/dtabs/x");
    }

    #[test]
    fn bad_base_urls_are_refused_as_namerctl_does() {
        assert_eq!("".parse::<BaseUrl>().unwrap_err().message, "empty base URL");
        for bad in ["namerd:4180", "ftp://host", "http://", "http:///x", "http://h/x?y", "http://h x"] {
            let err = bad.parse::<BaseUrl>().unwrap_err();
            assert!(err.message.starts_with(&format!("invalid base URL: {}", bad.trim())), "{bad}: {}", err.message);
            assert_eq!(err.exit, Exit::Error);
        }
    }

    #[test]
    fn the_flag_wins_then_the_environment_then_the_default() {
        let env = |v: &str| match v {
            "WAYMARK_NAMER_URL" => Some("http://waymark:1".to_string()),
            "NAMERCTL_BASE_URL" => Some("http://namerctl:2".to_string()),
            _ => None,
        };
        let resolve = |flag, env: &dyn Fn(&str) -> Option<String>| BaseUrl::resolve(flag, env, None).unwrap();
        assert_eq!(resolve(Some("http://flag:3"), &env).as_str(), "http://flag:3");
        assert_eq!(resolve(None, &env).as_str(), "http://waymark:1");
        let namerctl_only = |v: &str| (v == "NAMERCTL_BASE_URL").then(|| "http://namerctl:2".to_string());
        assert_eq!(resolve(None, &namerctl_only).as_str(), "http://namerctl:2");
        let empty = |_: &str| Some(String::new());
        assert_eq!(resolve(None, &empty).as_str(), DEFAULT_BASE_URL);
        assert_eq!(resolve(None, &no_env).as_str(), DEFAULT_BASE_URL);
        let bad = |v: &str| (v == "WAYMARK_NAMER_URL").then(|| "nope".to_string());
        let err = BaseUrl::resolve(None, &bad, None).unwrap_err();
        assert_eq!(err.message, "$WAYMARK_NAMER_URL: invalid base URL: nope (expected http://host[:port][/prefix])");
    }

    #[test]
    fn a_namerctl_config_file_in_a_parent_directory_is_used_after_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        std::fs::create_dir_all(&nested).unwrap();
        std::fs::write(dir.path().join(".namerctl.yaml"), "base-url: http://from-file:4180/p/\n").unwrap();
        assert_eq!(BaseUrl::resolve(None, &no_env, Some(&nested)).unwrap().as_str(), "http://from-file:4180/p");
        let env = |_: &str| Some("http://env:1".to_string());
        assert_eq!(BaseUrl::resolve(None, &env, Some(&nested)).unwrap().as_str(), "http://env:1");

        std::fs::write(nested.join(".namerctl.json"), r#"{"base-url": "http://json:2"}"#).unwrap();
        assert_eq!(BaseUrl::resolve(None, &no_env, Some(&nested)).unwrap().as_str(), "http://json:2");
        std::fs::write(nested.join(".namerctl.yaml"), "base-url: [").unwrap();
        let err = BaseUrl::resolve(None, &no_env, Some(&nested)).unwrap_err();
        assert!(err.message.contains(".namerctl.yaml"), "{}", err.message);
    }

    #[test]
    fn names_and_dtabs_are_escaped_in_urls() {
        assert_eq!(segment("default"), "default");
        assert_eq!(segment("a b/c#"), "a%20b/c%23");
        assert_eq!(
            query("/svc=>/#/io.l5d.fs;/a=>1.00*/b & /c"),
            "/svc%3D%3E/%23/io.l5d.fs%3B/a%3D%3E1.00%2A/b%20%26%20/c"
        );
    }

    #[test]
    fn the_next_page_is_read_from_the_link_header() {
        assert_eq!(
            next_link(r#"</api/1/dtabs/web/history?offset=20&limit=20>; rel="next""#).as_deref(),
            Some("/api/1/dtabs/web/history?offset=20&limit=20")
        );
        assert_eq!(next_link(r#"</a>; rel="prev", </b>; rel=next"#).as_deref(), Some("/b"));
        assert_eq!(next_link(r#"<http://elsewhere/b>; rel="next""#), None);
        assert_eq!(next_link("garbage"), None);
    }

    #[test]
    fn history_notes_are_percent_encoded_utf8() {
        let note = ChangeNote { author: Some("zoë".into()), message: Some("50% to v2\n".into()) };
        assert_eq!(
            note.headers(),
            vec![(AUTHOR_HEADER, "zo%C3%AB".to_string()), (MESSAGE_HEADER, "50%25 to v2%0A".to_string())]
        );
        let blank = ChangeNote::new(Some(" ".into()), Some(String::new()));
        assert!(blank.headers().is_empty());
    }

    #[test]
    fn bodies_split_into_a_message_line_and_detail() {
        assert_eq!(split_body(""), (None, None));
        assert_eq!(split_body("Invalid dtab: x\n"), (Some("Invalid dtab: x"), None));
        assert_eq!(
            split_body("Invalid dtab: line 2\n  /c = /d\n     ^\n"),
            (Some("Invalid dtab: line 2"), Some("  /c = /d\n     ^"))
        );
    }
}
