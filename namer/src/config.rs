//! The namer's configuration: YAML, with a `kind` tag on every pluggable part and unknown
//! keys rejected. Each component owns its section; this module composes them and validates
//! the whole file, reporting every problem at once with where it is.
//!
//! With no file at all, [`NamerConfig::default`] is a working namer for a first try: an
//! in-memory store, the HTTP API on 127.0.0.1:4180, the gRPC API on 127.0.0.1:4321 and the
//! admin port on 127.0.0.1:9991.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;
use waymark_admin::LogFormat;
use waymark_interpreter::InterpreterOptions;
use waymark_interpreter::namers::validate_all;
use waymark_store::StoreConfig;
use waymark_tls::ServerTls;

use crate::namers::NamerKindConfig;
use crate::serve::ConnectionLimits;

/// The whole namer configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NamerConfig {
    /// Where dtabs are kept. Default: in memory.
    #[serde(default = "default_storage")]
    pub storage: StoreConfig,
    /// Service discovery namers, mounted under `/#/<prefix>`, consulted in order.
    #[serde(default)]
    pub namers: Vec<NamerKindConfig>,
    /// The APIs served: the namerd HTTP API and the `io.l5d.mesh` gRPC API.
    #[serde(default = "default_interfaces")]
    pub interfaces: Vec<InterfaceConfig>,
    /// The admin server: metrics, readiness and liveness.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Binding behaviour.
    #[serde(default)]
    pub interpreter: InterpreterConfig,
    /// Log output.
    #[serde(default)]
    pub logging: LoggingConfig,
}

/// One served API, chosen by `kind` (namerd's interface names).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "kind", deny_unknown_fields)]
pub enum InterfaceConfig {
    /// namerd's HTTP API (`/api/1/...`), default 127.0.0.1:4180.
    #[serde(rename = "io.l5d.httpController")]
    Http {
        /// The address to listen on.
        #[serde(default = "loopback")]
        ip: IpAddr,
        /// The port to listen on (0 picks a free one).
        #[serde(default = "http_port")]
        port: u16,
        /// Serve HTTPS (HTTP/1.1 and HTTP/2 through ALPN). With `client_ca_path`, only
        /// clients with a certificate from those CAs may use the API, and so change routing.
        #[serde(default)]
        tls: Option<ServerTls>,
        /// Connection limits: timeouts and the most connections held at once.
        #[serde(default)]
        limits: ConnectionLimits,
    },
    /// Linkerd 1's `io.l5d.mesh` gRPC API, default 127.0.0.1:4321.
    #[serde(rename = "io.l5d.mesh")]
    Mesh {
        /// The address to listen on.
        #[serde(default = "loopback")]
        ip: IpAddr,
        /// The port to listen on (0 picks a free one).
        #[serde(default = "mesh_port")]
        port: u16,
        /// Serve gRPC over TLS (ALPN `h2`), optionally requiring client certificates.
        #[serde(default)]
        tls: Option<ServerTls>,
        /// Connection limits: timeouts and the most connections held at once.
        #[serde(default)]
        limits: ConnectionLimits,
    },
}

/// The admin server.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// The address to listen on.
    #[serde(default = "loopback")]
    pub ip: IpAddr,
    /// The port to listen on (namerd's default, 9991; 0 picks a free one).
    #[serde(default = "admin_port")]
    pub port: u16,
    /// How long in-flight requests may take to finish on shutdown.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// Connection limits: timeouts and the most connections held at once (default 64).
    #[serde(default)]
    pub limits: ConnectionLimits,
}

/// Binding behaviour.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InterpreterConfig {
    /// The most lookups one chain of rewrites may take (Finagle's default, 100).
    #[serde(default = "default_max_depth")]
    pub max_depth: usize,
    /// How long a binding is kept after its last watcher left.
    #[serde(default = "default_idle_ttl_secs")]
    pub idle_ttl_secs: u64,
    /// How often `/$/inet` host names are resolved again.
    #[serde(default = "default_dns_refresh_ms")]
    pub dns_refresh_ms: u64,
    /// How long a non-streaming bind, resolve or delegate request may wait for names and
    /// addresses to become known (and a delegation may compute) before it answers 503.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// The most bindings with a per-request dtab (a router's `l5d-dtab` override, or a
    /// `dtab=` parameter) kept at once; past it idle ones are dropped early, and a new one
    /// fails while none is idle. Bindings without an override are never affected.
    #[serde(default = "default_max_override_bindings")]
    pub max_override_bindings: usize,
    /// The most bytes of per-request dtab text those bindings hold in all.
    #[serde(default = "default_max_override_bytes")]
    pub max_override_bytes: usize,
    /// The largest delegation a request may ask for, in bytes of namerd's JSON without
    /// addresses; a larger one answers 400.
    #[serde(default = "default_max_delegation_bytes")]
    pub max_delegation_bytes: usize,
}

/// Log output.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    /// A tracing filter, such as `info` or `waymark_namer=debug,info`. `RUST_LOG` overrides it.
    #[serde(default = "default_level")]
    pub level: String,
    /// `plain` or `json`.
    #[serde(default)]
    pub format: LogFormat,
}

/// A problem in the configuration: where (a key path) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key path, such as `interfaces[1].port`.
    pub at: String,
    /// What is wrong.
    pub message: String,
}

/// Why a configuration cannot be used: every problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the configuration came from.
    pub origin: String,
    /// The problems.
    pub problems: Vec<Problem>,
}

fn default_storage() -> StoreConfig {
    StoreConfig::Memory(Default::default())
}

fn default_interfaces() -> Vec<InterfaceConfig> {
    vec![
        InterfaceConfig::Http { ip: loopback(), port: http_port(), tls: None, limits: ConnectionLimits::default() },
        InterfaceConfig::Mesh { ip: loopback(), port: mesh_port(), tls: None, limits: ConnectionLimits::default() },
    ]
}

fn loopback() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

fn http_port() -> u16 {
    4180
}

fn mesh_port() -> u16 {
    4321
}

fn admin_port() -> u16 {
    9991
}

fn default_shutdown_grace_ms() -> u64 {
    10_000
}

fn default_max_depth() -> usize {
    waymark_dtab::DEFAULT_MAX_DEPTH
}

fn default_idle_ttl_secs() -> u64 {
    60
}

fn default_dns_refresh_ms() -> u64 {
    5_000
}

fn default_request_timeout_ms() -> u64 {
    10_000
}

fn default_max_override_bindings() -> usize {
    InterpreterOptions::default().max_override_bindings
}

fn default_max_override_bytes() -> usize {
    InterpreterOptions::default().max_override_bytes
}

fn default_max_delegation_bytes() -> usize {
    InterpreterOptions::default().max_delegation_bytes
}

fn default_level() -> String {
    "info".to_string()
}

impl Default for NamerConfig {
    fn default() -> Self {
        NamerConfig {
            storage: default_storage(),
            namers: Vec::new(),
            interfaces: default_interfaces(),
            admin: AdminConfig::default(),
            interpreter: InterpreterConfig::default(),
            logging: LoggingConfig::default(),
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            ip: loopback(),
            port: admin_port(),
            shutdown_grace_ms: default_shutdown_grace_ms(),
            limits: ConnectionLimits::default(),
        }
    }
}

impl Default for InterpreterConfig {
    fn default() -> Self {
        InterpreterConfig {
            max_depth: default_max_depth(),
            idle_ttl_secs: default_idle_ttl_secs(),
            dns_refresh_ms: default_dns_refresh_ms(),
            request_timeout_ms: default_request_timeout_ms(),
            max_override_bindings: default_max_override_bindings(),
            max_override_bytes: default_max_override_bytes(),
            max_delegation_bytes: default_max_delegation_bytes(),
        }
    }
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig { level: default_level(), format: LogFormat::default() }
    }
}

impl InterfaceConfig {
    /// The address the interface listens on.
    pub fn addr(&self) -> SocketAddr {
        match self {
            InterfaceConfig::Http { ip, port, .. } | InterfaceConfig::Mesh { ip, port, .. } => {
                SocketAddr::new(*ip, *port)
            }
        }
    }

    /// The interface's TLS settings, when it serves TLS.
    pub fn tls(&self) -> Option<&ServerTls> {
        match self {
            InterfaceConfig::Http { tls, .. } | InterfaceConfig::Mesh { tls, .. } => tls.as_ref(),
        }
    }

    /// The interface's connection limits.
    pub fn limits(&self) -> &ConnectionLimits {
        match self {
            InterfaceConfig::Http { limits, .. } | InterfaceConfig::Mesh { limits, .. } => limits,
        }
    }
}

impl AdminConfig {
    /// The address the admin server listens on.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }
}

impl InterpreterConfig {
    /// The interpreter's options.
    pub fn options(&self) -> InterpreterOptions {
        InterpreterOptions {
            max_depth: self.max_depth,
            idle_ttl: Duration::from_secs(self.idle_ttl_secs),
            dns_refresh: Duration::from_millis(self.dns_refresh_ms),
            max_override_bindings: self.max_override_bindings,
            max_override_bytes: self.max_override_bytes,
            max_delegation_bytes: self.max_delegation_bytes,
        }
    }

    /// The deadline for non-streaming requests.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

impl NamerConfig {
    /// Parses YAML (JSON is YAML too) and validates the result. Each section, and each element
    /// of a list, is read on its own, so that every problem in the file is reported at once,
    /// each with the key path where it is.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let fail = |problems: Vec<Problem>| ConfigError { origin: origin.to_string(), problems };
        let value: serde_json::Value = serde_saphyr::from_str(text)
            .map_err(|e| fail(vec![Problem { at: String::new(), message: e.to_string() }]))?;
        let sections = match value {
            serde_json::Value::Null => serde_json::Map::new(),
            serde_json::Value::Object(map) => map,
            other => {
                return Err(fail(vec![Problem {
                    at: String::new(),
                    message: format!("expected a mapping, not {other}"),
                }]));
            }
        };
        let mut config = NamerConfig::default();
        let mut problems = Vec::new();
        for (key, value) in sections {
            match key.as_str() {
                "storage" => read(value, "storage", &mut problems, |v| config.storage = v),
                "namers" => config.namers = read_list(value, "namers", &mut problems),
                "interfaces" => {
                    // namerd configurations usually list its thrift interface: say what to
                    // use instead, rather than only that the kind is unknown.
                    let thrift = kinds_at(&value, THRIFT_INTERFACE);
                    let first_new = problems.len();
                    config.interfaces = read_list(value, "interfaces", &mut problems);
                    for problem in &mut problems[first_new..] {
                        if thrift.iter().any(|i| problem.at == format!("interfaces[{i}]")) {
                            problem.message = THRIFT_UNSUPPORTED.to_string();
                        }
                    }
                }
                "telemetry" => check_telemetry(&value, &mut problems),
                "admin" => read(value, "admin", &mut problems, |v| config.admin = v),
                "interpreter" => read(value, "interpreter", &mut problems, |v| config.interpreter = v),
                "logging" => read(value, "logging", &mut problems, |v| config.logging = v),
                _ => problems.push(Problem {
                    at: key.clone(),
                    message:
                        "unknown key; expected storage, namers, interfaces, admin, interpreter, logging or telemetry"
                            .into(),
                }),
            }
        }
        if problems.is_empty() {
            problems = config.problems();
        }
        if problems.is_empty() { Ok(config) } else { Err(fail(problems)) }
    }

    /// Reads and validates a configuration file (`-` for standard input).
    pub fn load(file: &str) -> Result<Self, ConfigError> {
        let text = if file == "-" { std::io::read_to_string(std::io::stdin()) } else { std::fs::read_to_string(file) }
            .map_err(|e| ConfigError {
                origin: file.to_string(),
                problems: vec![Problem { at: String::new(), message: format!("cannot read: {e}") }],
            })?;
        NamerConfig::from_yaml(&text, file)
    }

    /// Every problem that can be found without I/O.
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if let Err(errors) = self.storage.validate() {
            problems.extend(
                errors.0.into_iter().map(|p| Problem { at: format!("storage.{}", p.path), message: p.message }),
            );
        }
        problems
            .extend(validate_all(&self.namers, "namers").into_iter().map(|p| Problem { at: p.at, message: p.message }));
        if self.interfaces.is_empty() {
            problems.push(Problem { at: "interfaces".into(), message: "at least one interface is needed".into() });
        }
        let limits = std::iter::once(("admin.limits".to_string(), &self.admin.limits))
            .chain(self.interfaces.iter().enumerate().map(|(i, c)| (format!("interfaces[{i}].limits"), c.limits())));
        for (at, limits) in limits {
            problems.extend(limits.problems(&at).into_iter().map(|(at, message)| Problem { at, message }));
        }
        let mut ports = vec![("admin".to_string(), self.admin.addr())];
        ports.extend(self.interfaces.iter().enumerate().map(|(i, c)| (format!("interfaces[{i}]"), c.addr())));
        for (i, (at, addr)) in ports.iter().enumerate() {
            if addr.port() == 0 {
                continue;
            }
            if let Some((first, _)) = ports[..i].iter().find(|(_, other)| other == addr) {
                problems
                    .push(Problem { at: format!("{at}.port"), message: format!("{addr} is already used by {first}") });
            }
        }
        if self.interpreter.max_depth == 0 {
            problems.push(Problem { at: "interpreter.max_depth".into(), message: "must be at least 1".into() });
        }
        if self.interpreter.max_depth > waymark_dtab::MAX_RECURSION {
            problems.push(Problem {
                at: "interpreter.max_depth".into(),
                message: format!("at most {} (the recursion guard)", waymark_dtab::MAX_RECURSION),
            });
        }
        for (key, value) in [
            ("max_override_bindings", self.interpreter.max_override_bindings),
            ("max_override_bytes", self.interpreter.max_override_bytes),
            ("max_delegation_bytes", self.interpreter.max_delegation_bytes),
        ] {
            if value == 0 {
                problems.push(Problem { at: format!("interpreter.{key}"), message: "must be at least 1".into() });
            }
        }
        if self.interpreter.request_timeout_ms == 0 {
            problems
                .push(Problem { at: "interpreter.request_timeout_ms".into(), message: "must be at least 1".into() });
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.logging.level) {
            problems.push(Problem { at: "logging.level".into(), message: format!("not a log filter: {e}") });
        }
        problems
    }
}

/// Reads one section, recording a problem at `at` if it does not fit.
fn read<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
    at: &str,
    problems: &mut Vec<Problem>,
    set: impl FnOnce(T),
) {
    match serde_json::from_value(value) {
        Ok(v) => set(v),
        Err(e) => problems.push(Problem { at: at.to_string(), message: e.to_string() }),
    }
}

const THRIFT_INTERFACE: &str = "io.l5d.thriftNameInterpreter";
const THRIFT_UNSUPPORTED: &str = "namerd's thrift interface (io.l5d.thriftNameInterpreter) is not provided: \
     point Linkerd 1 routers at the io.l5d.mesh interface (interpreter kind io.l5d.mesh) or the \
     io.l5d.httpController one (io.l5d.namerd.http), and remove this entry";
/// The Prometheus endpoints the admin port serves, whatever the configuration says.
const METRICS_PATHS: [&str; 2] = ["/admin/metrics/prometheus", "/metrics"];

/// The positions of the list elements whose `kind` is `kind`.
fn kinds_at(list: &serde_json::Value, kind: &str) -> Vec<usize> {
    let items = list.as_array().map(Vec::as_slice).unwrap_or_default();
    items
        .iter()
        .enumerate()
        .filter(|(_, item)| item.get("kind").and_then(|k| k.as_str()) == Some(kind))
        .map(|(i, _)| i)
        .collect()
}

/// namerd's `telemetry` section. Metrics are always served in the Prometheus format on the
/// admin port, so namerd's `io.l5d.prometheus` telemeter is accepted as it stands; anything
/// that would change or add to that (another path, a name prefix, other telemeters) is a
/// problem rather than silently ignored.
fn check_telemetry(value: &serde_json::Value, problems: &mut Vec<Problem>) {
    let Some(items) = value.as_array() else {
        problems.push(Problem { at: "telemetry".into(), message: "expected a list".into() });
        return;
    };
    for (i, item) in items.iter().enumerate() {
        let at = format!("telemetry[{i}]");
        let Some(fields) = item.as_object() else {
            problems.push(Problem { at, message: "expected a mapping with a kind".into() });
            continue;
        };
        match fields.get("kind").and_then(|k| k.as_str()) {
            Some("io.l5d.prometheus") => {}
            Some(kind) => {
                let message = format!(
                    "the {kind} telemeter is not provided: metrics are served in the Prometheus format on the \
                     admin port ({})",
                    METRICS_PATHS.join(" and ")
                );
                problems.push(Problem { at, message });
                continue;
            }
            None => {
                problems.push(Problem { at, message: "missing kind".into() });
                continue;
            }
        }
        for (key, setting) in fields {
            match (key.as_str(), setting.as_str()) {
                ("kind", _) => {}
                ("path", Some(path)) if METRICS_PATHS.contains(&path) => {}
                ("path", _) => problems.push(Problem {
                    at: format!("{at}.path"),
                    message: format!("metrics are served at {} only", METRICS_PATHS.join(" and ")),
                }),
                _ => problems.push(Problem {
                    at: format!("{at}.{key}"),
                    message: "not supported; io.l5d.prometheus takes only path".into(),
                }),
            }
        }
    }
}

/// Reads a list section element by element, recording a problem for each that does not fit.
fn read_list<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Vec<T> {
    let serde_json::Value::Array(items) = value else {
        problems.push(Problem { at: at.to_string(), message: "expected a list".into() });
        return Vec::new();
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        read(item, &format!("{at}[{i}]"), problems, |v| out.push(v));
    }
    out
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = if self.problems.len() == 1 { "" } else { "s" };
        write!(f, "{}: {} problem{plural}", self.origin, self.problems.len())?;
        for p in &self.problems {
            if p.at.is_empty() {
                write!(f, "\n  {}", p.message)?;
            } else {
                write!(f, "\n  {}: {}", p.at, p.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_file_is_a_working_namer_on_the_default_ports() {
        let config = NamerConfig::from_yaml("{}", "empty").unwrap();
        assert_eq!(config, NamerConfig::default());
        let addrs: Vec<SocketAddr> = config.interfaces.iter().map(InterfaceConfig::addr).collect();
        assert_eq!(addrs, ["127.0.0.1:4180".parse().unwrap(), "127.0.0.1:4321".parse().unwrap()]);
        assert_eq!(config.admin.addr(), "127.0.0.1:9991".parse().unwrap());
    }

    #[test]
    fn every_problem_is_reported_with_its_location() {
        let yaml = r#"
storage:
  kind: memory
  namespaces:
    "bad name": "/a => /b"
namers:
  - kind: io.l5d.fs
    root_dir: /tmp/a
  - kind: io.l5d.fs
    prefix: /io.l5d.fs/sub
    root_dir: /tmp/b
interfaces:
  - kind: io.l5d.httpController
    port: 9991
interpreter:
  max_depth: 0
"#;
        let err = NamerConfig::from_yaml(yaml, "namer.yaml").unwrap_err();
        let at: Vec<&str> = err.problems.iter().map(|p| p.at.as_str()).collect();
        assert_eq!(
            at,
            ["storage.namespaces.bad name", "namers[1].prefix", "interfaces[0].port", "interpreter.max_depth"]
        );
        assert!(err.to_string().starts_with("namer.yaml: 4 problems"), "{err}");
    }

    #[test]
    fn problems_of_every_section_are_reported_together() {
        let yaml = "admin:\n  port: abc\nnamers:\n  - kind: io.l5d.fs\n    rootdir: x\n  - kind: io.l5d.fs\n    root_dir: /d\nextra: 1\n";
        let err = NamerConfig::from_yaml(yaml, "x").unwrap_err();
        let at: Vec<&str> = err.problems.iter().map(|p| p.at.as_str()).collect();
        assert_eq!(at, ["admin", "extra", "namers[0]"], "{err}");
        assert!(err.problems[2].message.contains("rootdir"), "{err}");
    }

    #[test]
    fn a_namerd_configuration_loads_once_its_thrift_interface_is_gone() {
        let namerd = r#"
admin:
  ip: 0.0.0.0
  port: 9991
storage:
  kind: io.l5d.inMemory
  namespaces:
    default: |
      /svc => /#/io.l5d.fs;
namers:
- kind: io.l5d.fs
  rootDir: disco
interfaces:
- kind: io.l5d.thriftNameInterpreter
  ip: 0.0.0.0
  port: 4100
- kind: io.l5d.httpController
  ip: 0.0.0.0
  port: 4180
- kind: io.l5d.mesh
  ip: 0.0.0.0
  port: 4321
telemetry:
- kind: io.l5d.prometheus
- kind: io.l5d.zipkin
- kind: io.l5d.prometheus
  path: /stats
  prefix: namerd_
"#;
        let err = NamerConfig::from_yaml(namerd, "namerd.yaml").unwrap_err();
        let at: Vec<&str> = err.problems.iter().map(|p| p.at.as_str()).collect();
        assert_eq!(at, ["interfaces[0]", "telemetry[1]", "telemetry[2].path", "telemetry[2].prefix"], "{err}");
        assert!(err.problems[1].message.contains("io.l5d.zipkin telemeter is not provided"), "{err}");

        let without_thrift = namerd.replace("- kind: io.l5d.thriftNameInterpreter\n  ip: 0.0.0.0\n  port: 4100\n", "");
        let kept = without_thrift.split("- kind: io.l5d.zipkin").next().unwrap();
        let config = NamerConfig::from_yaml(kept, "namerd.yaml").unwrap();
        assert_eq!(config.interfaces.len(), 2);
        assert_eq!(config.admin.addr().port(), 9991);
    }

    #[test]
    fn unknown_keys_and_kinds_are_rejected() {
        let err = NamerConfig::from_yaml("interfaces:\n  - kind: io.l5d.thriftNameInterpreter\n", "x").unwrap_err();
        assert_eq!(err.problems[0].at, "interfaces[0]");
        assert!(err.problems[0].message.contains("thrift interface (io.l5d.thriftNameInterpreter) is not provided"));
        assert!(err.problems[0].message.contains("io.l5d.mesh"), "{err}");
        let err = NamerConfig::from_yaml("admin:\n  prot: 1\n", "x").unwrap_err();
        assert!(err.problems[0].message.contains("prot"), "{err}");
    }
}
