//! Where bindings come from: the namer (over its gRPC API) or, standalone, the router's own
//! dtab and the built-in namers.
//!
//! Both sit behind [`Resolver`], so the rest of the router does not know which one it has.

use std::sync::Arc;
use waymark_tls::ClientTls;

use futures::future::BoxFuture;
use serde::Deserialize;
use tokio::sync::watch;
use waymark_dtab::json::DelegateJson;
use waymark_dtab::{Dtab, Path};
use waymark_interpreter::namers::validate_all;
use waymark_interpreter::{BuiltinNamer, FixedDtabs, FromConfigError, Interpreter, InterpreterOptions, Resolver};

/// Where the router's bindings come from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum InterpreterConfig {
    /// Bind through a namer's `io.linkerd.mesh` gRPC API (Linkerd 1's `io.l5d.mesh`).
    #[serde(alias = "io.l5d.mesh")]
    Mesh {
        /// The namer's gRPC address, `host:port`.
        #[serde(default = "default_mesh_dst")]
        dst: String,
        /// The namer namespace whose dtab applies (Linkerd 1's `root`, without the `/`).
        #[serde(default = "default_namespace")]
        namespace: String,
        /// The first reconnect delay after a stream fails; later ones double, with jitter.
        #[serde(default = "default_retry_base_ms")]
        retry_base_ms: u64,
        /// The longest reconnect delay.
        #[serde(default = "default_retry_max_ms")]
        retry_max_ms: u64,
        /// Reach the namer over TLS: the CAs its certificate must come from, and this
        /// router's own certificate when the namer requires one.
        #[serde(default)]
        tls: Option<ClientTls>,
    },
    /// No namer: bind with this dtab and the built-in `/$/` namers, for single-node use and
    /// tests.
    Standalone {
        /// The dtab, in dtab text.
        dtab: String,
        /// Namers mounted under `/#/<prefix>`: the built-in kinds (`io.l5d.fs`,
        /// `io.l5d.static`, `io.l5d.rewrite`). Kubernetes namers run in the namer service.
        #[serde(default)]
        namers: Vec<BuiltinNamer>,
    },
}

/// The namer's state, as the admin endpoints and metrics report it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NamerStatus {
    /// True while the namer answers.
    pub reachable: bool,
    /// True once the namer has answered at least once, so that there is state to serve from.
    pub ever_reached: bool,
    /// The namespace's dtab, when known.
    pub dtab: Option<Dtab>,
    /// Its version, when known.
    pub version: Option<String>,
    /// Why the namer could not be reached the last time it could not, for `/ready`.
    pub last_error: Option<String>,
}

/// Delegation through the router's own interpreter.
struct LocalDelegator(Interpreter);

/// The namespace of a standalone router's dtab.
const STANDALONE_NAMESPACE: &str = "standalone";

/// How long a standalone router's `/delegator.json` may compute, as long as it waits for a
/// namer's answer in mesh mode.
const LOCAL_DELEGATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Explains how a path resolves, for `/delegator.json`.
pub trait Delegator: Send + Sync + 'static {
    /// The delegation tree of `path` through the namespace's dtab followed by `local`.
    fn delegate(&self, path: Path, local: Dtab) -> BoxFuture<'static, Result<DelegateJson, String>>;
}

/// A binding source with its delegation and status: everything the router needs from naming.
#[derive(Clone)]
pub struct Naming {
    pub(crate) resolver: Arc<dyn Resolver>,
    pub(crate) delegator: Arc<dyn Delegator>,
    pub(crate) status: watch::Receiver<NamerStatus>,
    pub(crate) namespace: String,
}

fn default_mesh_dst() -> String {
    "127.0.0.1:4321".to_string()
}
fn default_namespace() -> String {
    "default".to_string()
}
fn default_retry_base_ms() -> u64 {
    1_000
}
fn default_retry_max_ms() -> u64 {
    30_000
}

impl Default for InterpreterConfig {
    fn default() -> Self {
        InterpreterConfig::Mesh {
            dst: default_mesh_dst(),
            namespace: default_namespace(),
            retry_base_ms: default_retry_base_ms(),
            retry_max_ms: default_retry_max_ms(),
            tls: None,
        }
    }
}

impl InterpreterConfig {
    pub(crate) fn problems(&self, at: &str, out: &mut Vec<String>) {
        match self {
            InterpreterConfig::Mesh { dst, namespace, retry_base_ms, retry_max_ms, tls } => {
                if let Some(tls) = tls {
                    out.extend(tls.problems(&format!("{at}.tls")));
                }
                if dst.rsplit_once(':').is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err()) {
                    out.push(format!("{at}.dst: {dst:?} is not host:port"));
                }
                if namespace.is_empty() || namespace.contains('/') {
                    out.push(format!("{at}.namespace: {namespace:?} must be one non-empty path element"));
                }
                if *retry_base_ms == 0 || retry_base_ms > retry_max_ms {
                    out.push(format!("{at}: retry_base_ms must be more than 0 and at most retry_max_ms"));
                }
            }
            InterpreterConfig::Standalone { dtab, namers } => {
                if let Err(e) = dtab.parse::<Dtab>() {
                    out.push(format!("{at}.dtab: {e}\n{}", e.excerpt()));
                }
                for problem in validate_all(namers, &format!("{at}.namers")) {
                    out.push(format!("{}: {}", problem.at, problem.message));
                }
            }
        }
    }
}

impl std::fmt::Debug for Naming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Naming").field("namespace", &self.namespace).finish_non_exhaustive()
    }
}

impl Naming {
    /// Naming from any resolver. Delegation answers with an error unless `delegator` is
    /// given; the status says the source is reachable.
    pub fn from_resolver(resolver: Arc<dyn Resolver>, delegator: Option<Arc<dyn Delegator>>) -> Self {
        let (_tx, status) =
            watch::channel(NamerStatus { reachable: true, ever_reached: true, ..NamerStatus::default() });
        Naming {
            resolver,
            delegator: delegator.unwrap_or_else(|| Arc::new(NoDelegation)),
            status,
            namespace: "default".to_string(),
        }
    }

    /// Naming from a resolver whose state is reported by `status`.
    pub fn with_status(
        resolver: Arc<dyn Resolver>,
        delegator: Arc<dyn Delegator>,
        status: watch::Receiver<NamerStatus>,
        namespace: String,
    ) -> Self {
        Naming { resolver, delegator, status, namespace }
    }

    /// Standalone naming: `dtab` and `namers` in the router's own process.
    pub async fn standalone(dtab: Dtab, namers: &[BuiltinNamer]) -> Result<Self, FromConfigError> {
        let dtabs = Arc::new(FixedDtabs::with(STANDALONE_NAMESPACE, dtab.clone()));
        let interpreter = Interpreter::from_config(dtabs, namers, InterpreterOptions::default()).await?;
        let (_tx, status) = watch::channel(NamerStatus {
            reachable: true,
            ever_reached: true,
            dtab: Some(dtab),
            version: Some("static".to_string()),
            last_error: None,
        });
        Ok(Naming {
            resolver: Arc::new(interpreter.namespace(STANDALONE_NAMESPACE)),
            delegator: Arc::new(LocalDelegator(interpreter)),
            status,
            namespace: STANDALONE_NAMESPACE.to_string(),
        })
    }

    /// The namespace's dtab as last known, or empty.
    pub(crate) fn base_dtab(&self) -> Dtab {
        self.status.borrow().dtab.clone().unwrap_or_default()
    }
}

struct NoDelegation;

impl Delegator for NoDelegation {
    fn delegate(&self, _path: Path, _local: Dtab) -> BoxFuture<'static, Result<DelegateJson, String>> {
        Box::pin(async { Err("delegation is not available from this binding source".to_string()) })
    }
}

impl Delegator for LocalDelegator {
    /// Delegates on a blocking thread, within the interpreter's delegation limits and
    /// [`LOCAL_DELEGATION_TIMEOUT`].
    fn delegate(&self, path: Path, local: Dtab) -> BoxFuture<'static, Result<DelegateJson, String>> {
        let interpreter = self.0.clone();
        Box::pin(async move {
            let tree = interpreter
                .delegate(STANDALONE_NAMESPACE, &path, &local, LOCAL_DELEGATION_TIMEOUT)
                .await
                .map_err(|e| e.to_string())?;
            Ok(DelegateJson::from_tree(&tree, &mut |_| None))
        })
    }
}
