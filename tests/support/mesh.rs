//! A whole mesh as separate processes, the way a user runs it: a namer, a router and the
//! demo's sample services (web v1/v2 calling greeter v1/v2 through the router).
//!
//! Ports are chosen up front, so that a namer can be killed and started again at the same
//! address, and a router keeps pointing at it. Every process is killed on drop.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::WAYMARK;

/// A child process, killed (and reaped) on drop.
pub struct Process {
    name: String,
    child: Option<Child>,
}

impl Process {
    pub fn spawn(name: &str, command: &mut Command) -> Self {
        let child = command.stdin(Stdio::null()).spawn().unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Process { name: name.to_string(), child: Some(child) }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the process at once (SIGKILL): no goodbye to anyone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn check_running(&mut self) {
        if let Some(child) = &mut self.child
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!("{} exited early: {status}", self.name);
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP port on loopback that was free a moment ago.
pub fn free_port() -> u16 {
    waymark_test_support::free_port().expect("a free port")
}

/// Waits until something accepts connections at `addr`, checking that `process` still runs.
pub fn wait_listening(process: &mut Process, addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        process.check_running();
        assert!(Instant::now() < deadline, "{} is not listening on {addr}", process.name);
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Where a namer keeps its dtabs.
#[derive(Clone)]
pub enum Storage {
    /// A directory of files.
    Files(PathBuf),
    /// etcd at these client URLs.
    Etcd(String),
}

/// A `waymark namer` process.
pub struct Namer {
    pub process: Process,
    pub http: u16,
    pub mesh: u16,
    pub admin: u16,
    config: PathBuf,
}

impl Namer {
    /// Starts a namer on fresh ports with `storage` and an `io.l5d.fs` namer over `disco`.
    pub fn start(dir: &Path, name: &str, storage: &Storage, disco: &Path) -> Self {
        Namer::start_with(dir, name, storage, disco, None)
    }

    /// The same, with `mesh_tls` (YAML) as the gRPC interface's `tls`.
    pub fn start_with(dir: &Path, name: &str, storage: &Storage, disco: &Path, mesh_tls: Option<&str>) -> Self {
        let (http, mesh, admin) = (free_port(), free_port(), free_port());
        let storage = match storage {
            Storage::Files(dir) => format!("storage:\n  kind: file\n  dir: {}\n", dir.display()),
            Storage::Etcd(endpoint) => format!("storage:\n  kind: etcd\n  endpoints: [\"{endpoint}\"]\n"),
        };
        let config = dir.join(format!("{name}.yaml"));
        std::fs::write(
            &config,
            format!(
                "{storage}namers:\n  - kind: io.l5d.fs\n    root_dir: {disco}\n    poll_interval_ms: 200\n\
                 interfaces:\n  - {{kind: io.l5d.httpController, port: {http}}}\n  - {{kind: io.l5d.mesh, port: {mesh}{tls}}}\n\
                 admin: {{port: {admin}}}\nlogging: {{level: warn}}\n",
                disco = disco.display(),
                tls = mesh_tls.map(|tls| format!(", tls: {tls}")).unwrap_or_default(),
            ),
        )
        .unwrap();
        let mut namer = Namer { process: Process { name: name.to_string(), child: None }, http, mesh, admin, config };
        namer.restart();
        namer
    }

    /// Starts the namer (again) with the same configuration and ports.
    pub fn restart(&mut self) {
        self.process.kill();
        self.process =
            Process::spawn(&self.process.name, Command::new(WAYMARK).arg("namer").arg("--config").arg(&self.config));
        wait_listening(&mut self.process, ([127, 0, 0, 1], self.http).into());
        wait_listening(&mut self.process, ([127, 0, 0, 1], self.mesh).into());
    }

    /// The HTTP API's base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }
}

/// A `waymark router` process bound through a namer's gRPC API.
pub struct Router {
    pub process: Process,
    pub port: u16,
    pub admin: u16,
}

impl Router {
    /// Starts a router on `port` that binds through the namer's gRPC API at `mesh`.
    pub fn start(dir: &Path, port: u16, mesh: u16) -> Self {
        Router::start_with(dir, "router", port, mesh, None)
    }

    /// The same, named `name`, with `tls` (YAML) as its `interpreter.tls`.
    pub fn start_with(dir: &Path, name: &str, port: u16, mesh: u16, tls: Option<&str>) -> Self {
        let admin = free_port();
        let config = dir.join(format!("{name}.yaml"));
        let tls = tls.map(|tls| format!("  tls: {tls}\n")).unwrap_or_default();
        std::fs::write(
            &config,
            format!(
                "listeners:\n  - port: {port}\nadmin:\n  port: {admin}\n\
                 interpreter:\n  kind: mesh\n  dst: 127.0.0.1:{mesh}\n  namespace: default\n  retry_base_ms: 100\n  retry_max_ms: 1000\n{tls}"
            ),
        )
        .unwrap();
        let mut process =
            Process::spawn(name, Command::new(WAYMARK).args(["router", "--log", "warn", "--config"]).arg(&config));
        wait_listening(&mut process, ([127, 0, 0, 1], port).into());
        Router { process, port, admin }
    }

    /// The router's base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// The sample services, their files for the `io.l5d.fs` namer, and the dtab that routes them.
pub struct Services {
    _processes: Vec<Process>,
    /// The directory the `io.l5d.fs` namer reads.
    pub disco: PathBuf,
}

/// The base dtab: everything through the files, web and greeter at v1.
pub const BASE_DTAB: &str = "/svc=>/#/io.l5d.fs;/svc/web=>/svc/web-v1;/svc/greeter=>/svc/greeter-v1";

impl Services {
    /// Starts web v1/v2 (calling greeter) and greeter v1/v2, all calling through the router
    /// on `router_port`, and writes one file per service into `dir/disco`.
    pub fn start(dir: &Path, router_port: u16) -> Self {
        let disco = dir.join("disco");
        std::fs::create_dir_all(&disco).unwrap();
        let mut processes = Vec::new();
        for (name, version, downstream) in [
            ("web", "v1", Some("greeter")),
            ("web", "v2", Some("greeter")),
            ("greeter", "v1", None),
            ("greeter", "v2", None),
        ] {
            let port = free_port();
            let mut command = Command::new(WAYMARK);
            command
                .args(["demo-service", "--name", name, "--version", version])
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--router")
                .arg(format!("127.0.0.1:{router_port}"))
                .stdout(Stdio::null());
            if let Some(downstream) = downstream {
                command.args(["--downstream", downstream]);
            }
            let mut process = Process::spawn(&format!("{name} {version}"), &mut command);
            wait_listening(&mut process, ([127, 0, 0, 1], port).into());
            std::fs::write(disco.join(format!("{name}-{version}")), format!("127.0.0.1 {port}\n")).unwrap();
            processes.push(process);
        }
        Services { _processes: processes, disco }
    }
}
