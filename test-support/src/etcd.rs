//! A real etcd server for tests: Debian's `etcd-server` on free loopback ports with a
//! temporary data directory.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use tempfile::TempDir;

use crate::free_port;
use crate::pki::TestCert;

/// The environment variable that names the etcd binary when it is not `etcd` on `PATH`.
pub const ETCD_BINARY_ENV: &str = "WAYMARK_ETCD";

/// How long etcd may take to answer its health check after starting.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How many times `start` picks new ports when etcd fails to come up (a port taken between
/// choosing and binding it).
const START_ATTEMPTS: usize = 4;

/// A single-member etcd cluster on 127.0.0.1, killed when dropped.
///
/// [`EtcdServer::kill`] and [`EtcdServer::restart`] keep the data directory and ports, so a
/// restarted server has every key and revision of the old one, at the same address. The
/// methods block (for up to 30 s while waiting for etcd), so async tests should
/// use a multi-threaded runtime or call them from `spawn_blocking`.
#[derive(Debug)]
pub struct EtcdServer {
    binary: PathBuf,
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    /// Serves `/health` over plain HTTP whatever the client URL, for the readiness check.
    metrics_port: u16,
    tls: Option<EtcdServerTls>,
    child: Option<Child>,
}

/// TLS for etcd's client URL.
#[derive(Debug, Clone)]
pub struct EtcdServerTls {
    /// The server's certificate and key; it should name 127.0.0.1.
    pub server: TestCert,
    /// The CA that signs client certificates, in PEM.
    pub client_ca_pem: String,
    /// Whether clients must present a certificate signed by that CA.
    pub client_cert_auth: bool,
}

impl EtcdServer {
    /// Starts etcd and waits until it answers. Fails with a clear message if the `etcd`
    /// binary is missing.
    pub fn start() -> anyhow::Result<EtcdServer> {
        EtcdServer::start_with(None)
    }

    /// Starts etcd serving clients over TLS (`https`), and waits until it answers.
    pub fn start_tls(tls: EtcdServerTls) -> anyhow::Result<EtcdServer> {
        EtcdServer::start_with(Some(tls))
    }

    fn start_with(tls: Option<EtcdServerTls>) -> anyhow::Result<EtcdServer> {
        let binary = find_binary()?;
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let mut server = EtcdServer {
                binary: binary.clone(),
                dir: tempfile::Builder::new().prefix("waymark-etcd-").tempdir().context("creating etcd's data dir")?,
                client_port: free_port()?,
                peer_port: free_port()?,
                metrics_port: free_port()?,
                tls: tls.clone(),
                child: None,
            };
            match server.spawn_and_wait() {
                Ok(()) => return Ok(server),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("etcd did not start")))
    }

    /// The client URL, such as `http://127.0.0.1:40123` (`https` with TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The client address.
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.client_port))
    }

    /// The data directory, kept across restarts.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Kills etcd at once (SIGKILL), as a crash would, and waits for it to exit.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            child.wait().context("waiting for etcd to exit")?;
        }
        Ok(())
    }

    /// Starts etcd again on the same ports and data directory, and waits until it answers.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            bail!("etcd is still running; kill it first");
        }
        self.spawn_and_wait()
    }

    /// The last lines etcd logged, for failure messages.
    pub fn log_tail(&self) -> String {
        let mut log = String::new();
        let _ = File::open(self.log_path()).and_then(|mut f| f.read_to_string(&mut log));
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn spawn_and_wait(&mut self) -> anyhow::Result<()> {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let metrics = format!("http://127.0.0.1:{}", self.metrics_port);
        let log = OpenOptions::new().create(true).append(true).open(self.log_path()).context("opening etcd's log")?;
        let mut command = Command::new(&self.binary);
        command
            .args(["--name", "n1", "--data-dir"])
            .arg(self.data_dir())
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("n1={peer}")])
            .args(["--listen-metrics-urls", &metrics])
            .args(["--logger", "zap", "--log-level", "error"]);
        if let Some(tls) = &self.tls {
            let write = |name: &str, pem: &str| -> anyhow::Result<PathBuf> {
                let path = self.dir.path().join(name);
                std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
                Ok(path)
            };
            command
                .arg("--cert-file")
                .arg(write("server.pem", &tls.server.cert_pem)?)
                .arg("--key-file")
                .arg(write("server-key.pem", &tls.server.key_pem)?)
                .arg("--trusted-ca-file")
                .arg(write("client-ca.pem", &tls.client_ca_pem)?)
                .arg(format!("--client-cert-auth={}", tls.client_cert_auth));
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if !self.is_running() {
                self.child = None;
                bail!("etcd exited while starting; its log ends with:\n{}", self.log_tail());
            }
            if healthy(SocketAddr::from((Ipv4Addr::LOCALHOST, self.metrics_port))) {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill()?;
                bail!("etcd did not become healthy within {READY_TIMEOUT:?}; its log ends with:\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

fn find_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(ETCD_BINARY_ENV) {
        return Ok(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|dir| dir.join("etcd")).find(|candidate| is_executable(candidate)).ok_or_else(
        || {
            anyhow!(
                "the etcd binary was not found on PATH: install Debian's etcd-server package \
                 (apt-get install etcd-server), or set {ETCD_BINARY_ENV} to its path"
            )
        },
    )
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Asks etcd's `/health` endpoint, over plain HTTP/1.0.
fn healthy(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.contains(r#""health":"true""#)
}
