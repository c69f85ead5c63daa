//! The client configuration, found as a workload in a cluster and an operator at a desk expect:
//! an explicit kubeconfig first (a `--kubeconfig` flag), then the pod's service account
//! (`KUBERNETES_SERVICE_HOST`/`_PORT` and the mounted token, CA and namespace), then the files
//! `$KUBECONFIG` lists (merged as kubectl merges them), then `~/.kube/config`.
//!
//! Everything the search reads from the process comes in through [`KubeEnv`], so tests point
//! it at files they wrote instead of changing the process environment.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

/// Where a pod's service account credentials are mounted.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// What the caller asks for explicitly; anything unset is searched for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientOptions {
    /// A kubeconfig file to use instead of searching (kubectl's `--kubeconfig`).
    pub kubeconfig: Option<PathBuf>,
    /// A context of the kubeconfig other than its current one (kubectl's `--context`). Setting
    /// it means a kubeconfig is wanted, so the in-cluster configuration is skipped.
    pub context: Option<String>,
}

/// The parts of the process environment the search reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeEnv {
    /// `KUBERNETES_SERVICE_HOST`.
    pub service_host: Option<String>,
    /// `KUBERNETES_SERVICE_PORT`.
    pub service_port: Option<String>,
    /// `KUBECONFIG`: one or more paths, separated as `PATH` is.
    pub kubeconfig: Option<OsString>,
    /// The home directory, for `~/.kube/config`.
    pub home: Option<PathBuf>,
    /// Where the service account's `token`, `ca.crt` and `namespace` are.
    pub service_account_dir: PathBuf,
}

/// Which configuration was used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// The kubeconfig named in [`ClientOptions::kubeconfig`].
    Explicit(PathBuf),
    /// The pod's service account.
    InCluster,
    /// The files `$KUBECONFIG` lists.
    KubeconfigEnv(Vec<PathBuf>),
    /// `~/.kube/config`.
    HomeKubeconfig(PathBuf),
}

/// Why no client could be configured.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing to configure from.
    #[error(
        "no Kubernetes configuration found: not in a cluster (KUBERNETES_SERVICE_HOST is unset), KUBECONFIG is unset, and {home} does not exist"
    )]
    NotFound {
        /// The home kubeconfig that was looked for.
        home: String,
    },
    /// The in-cluster environment is there but its files are not usable.
    #[error("in-cluster configuration: {what} {}", path.display())]
    InCluster {
        /// What was wrong.
        what: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying error, if any.
        #[source]
        source: Option<std::io::Error>,
    },
    /// `KUBERNETES_SERVICE_PORT` is not a port number.
    #[error("in-cluster configuration: KUBERNETES_SERVICE_PORT {0:?} is not a port")]
    InClusterPort(String),
    /// A kubeconfig could not be read or used.
    #[error("kubeconfig {}", describe(.paths))]
    Kubeconfig {
        /// The files concerned.
        paths: Vec<PathBuf>,
        /// What kube reported.
        #[source]
        source: KubeconfigError,
    },
    /// The configuration was read but the client could not be built from it.
    #[error("building the Kubernetes client")]
    Build(#[source] kube::Error),
}

fn describe(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

impl KubeEnv {
    /// The environment of this process.
    pub fn from_process() -> KubeEnv {
        KubeEnv {
            service_host: std::env::var("KUBERNETES_SERVICE_HOST").ok().filter(|h| !h.is_empty()),
            service_port: std::env::var("KUBERNETES_SERVICE_PORT").ok().filter(|p| !p.is_empty()),
            kubeconfig: std::env::var_os("KUBECONFIG").filter(|k| !k.is_empty()),
            home: std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from),
            service_account_dir: PathBuf::from(SERVICE_ACCOUNT_DIR),
        }
    }
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::Explicit(p) => write!(f, "kubeconfig {}", p.display()),
            ConfigSource::InCluster => f.write_str("in-cluster service account"),
            ConfigSource::KubeconfigEnv(paths) => write!(f, "KUBECONFIG ({})", describe(paths)),
            ConfigSource::HomeKubeconfig(p) => write!(f, "kubeconfig {}", p.display()),
        }
    }
}

/// Finds the configuration, in the order described at the top of this module.
pub async fn resolve(options: &ClientOptions, env: &KubeEnv) -> Result<(kube::Config, ConfigSource), ClientError> {
    let kube_options = KubeConfigOptions { context: options.context.clone(), cluster: None, user: None };
    if let Some(path) = &options.kubeconfig {
        let config = from_files(std::slice::from_ref(path), &kube_options).await?;
        return Ok((config, ConfigSource::Explicit(path.clone())));
    }
    if options.context.is_none()
        && let Some(config) = in_cluster(env)?
    {
        return Ok((config, ConfigSource::InCluster));
    }
    if let Some(list) = &env.kubeconfig {
        let paths: Vec<PathBuf> = std::env::split_paths(list).filter(|p| !p.as_os_str().is_empty()).collect();
        if !paths.is_empty() {
            let config = from_files(&paths, &kube_options).await?;
            return Ok((config, ConfigSource::KubeconfigEnv(paths)));
        }
    }
    let home = env.home.as_ref().map(|h| h.join(".kube").join("config"));
    match home {
        Some(path) if path.exists() => {
            let config = from_files(std::slice::from_ref(&path), &kube_options).await?;
            Ok((config, ConfigSource::HomeKubeconfig(path)))
        }
        other => Err(ClientError::NotFound {
            home: other.map_or_else(|| "~/.kube/config".to_string(), |p| p.display().to_string()),
        }),
    }
}

/// A client for the configuration [`resolve`] finds in this process's environment.
pub async fn connect(options: &ClientOptions) -> Result<(kube::Client, ConfigSource), ClientError> {
    connect_with(options, &KubeEnv::from_process()).await
}

/// A client for the configuration [`resolve`] finds in `env`.
pub async fn connect_with(options: &ClientOptions, env: &KubeEnv) -> Result<(kube::Client, ConfigSource), ClientError> {
    let (config, source) = resolve(options, env).await?;
    let client = kube::Client::try_from(config).map_err(ClientError::Build)?;
    tracing::debug!(source = %source, "kubernetes client configured");
    Ok((client, source))
}

async fn from_files(paths: &[PathBuf], options: &KubeConfigOptions) -> Result<kube::Config, ClientError> {
    let error = |source| ClientError::Kubeconfig { paths: paths.to_vec(), source };
    let mut merged = Kubeconfig::default();
    for path in paths {
        let file = Kubeconfig::read_from(path).map_err(error)?;
        merged = merged.merge(file).map_err(error)?;
    }
    kube::Config::from_custom_kubeconfig(merged, options).await.map_err(error)
}

/// The service account's configuration, if the process runs in a pod.
fn in_cluster(env: &KubeEnv) -> Result<Option<kube::Config>, ClientError> {
    let (Some(host), Some(port)) = (&env.service_host, &env.service_port) else { return Ok(None) };
    let port: u16 = port.parse().map_err(|_| ClientError::InClusterPort(port.clone()))?;
    let host = match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
        _ => host.clone(),
    };
    let url = format!("https://{host}:{port}");
    let uri = url.parse().map_err(|_| ClientError::InClusterPort(url.clone()))?;
    let dir = &env.service_account_dir;
    let token = dir.join("token");
    if !token.is_file() {
        return Err(ClientError::InCluster { what: "no service account token at", path: token, source: None });
    }
    let ca_path = dir.join("ca.crt");
    let ca = read(&ca_path, "cannot read the CA")?;
    let certs: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(&ca)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|_| ClientError::InCluster { what: "no PEM certificates in", path: ca_path.clone(), source: None })?;
    if certs.is_empty() {
        return Err(ClientError::InCluster { what: "no PEM certificates in", path: ca_path, source: None });
    }
    let namespace_path = dir.join("namespace");
    let namespace = match std::fs::read_to_string(&namespace_path) {
        Ok(ns) if !ns.trim().is_empty() => ns.trim().to_string(),
        _ => "default".to_string(),
    };
    let mut config = kube::Config::new(uri);
    config.default_namespace = namespace;
    config.root_cert = Some(certs);
    // Both files are read again as they rotate: the token hourly, the CA on renewal.
    config.root_cert_file = Some(ca_path);
    config.auth_info.token_file = Some(token.display().to_string());
    Ok(Some(config))
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::InCluster {
        what,
        path: path.to_path_buf(),
        source: Some(source),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty_env(dir: &Path) -> KubeEnv {
        KubeEnv { home: Some(dir.to_path_buf()), service_account_dir: dir.join("sa"), ..KubeEnv::default() }
    }

    #[tokio::test]
    async fn nothing_to_configure_from_says_what_was_looked_for() {
        let dir = tempfile::tempdir().unwrap();
        let error = resolve(&ClientOptions::default(), &empty_env(dir.path())).await.unwrap_err();
        let text = error.to_string();
        assert!(text.contains("KUBECONFIG is unset") && text.contains(".kube/config"), "{text}");
    }

    #[tokio::test]
    async fn in_cluster_needs_its_files_and_a_port() {
        let dir = tempfile::tempdir().unwrap();
        let mut env = empty_env(dir.path());
        env.service_host = Some("10.96.0.1".into());
        env.service_port = Some("https".into());
        assert!(matches!(resolve(&ClientOptions::default(), &env).await, Err(ClientError::InClusterPort(_))));
        env.service_port = Some("443".into());
        let error = resolve(&ClientOptions::default(), &env).await.unwrap_err();
        assert!(error.to_string().contains("no service account token"), "{error}");
    }

    #[tokio::test]
    async fn a_kubeconfig_that_does_not_parse_names_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken");
        std::fs::write(&path, "clusters: [").unwrap();
        let options = ClientOptions { kubeconfig: Some(path.clone()), context: None };
        let error = resolve(&options, &empty_env(dir.path())).await.unwrap_err();
        assert!(error.to_string().contains(&path.display().to_string()), "{error}");
    }
}
