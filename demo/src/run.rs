//! `waymark demo`: the whole idea working on one machine, as separate processes talking over
//! real sockets.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Ports and where data goes.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The router's outbound port.
    pub router_port: u16,
    /// The router's admin port.
    pub router_admin_port: u16,
    /// The namer's HTTP API port.
    pub namer_port: u16,
    /// The namer's gRPC API port.
    pub mesh_port: u16,
    /// The namer's admin port.
    pub namer_admin_port: u16,
    /// Where to keep the dtabs, service files and configurations; a fresh temporary
    /// directory, removed on exit, when `None`.
    pub data_dir: Option<PathBuf>,
    /// Keep the temporary directory on exit.
    pub keep_data: bool,
}

/// The base dtab the demo starts with.
pub const BASE_DTAB: &str = "/svc => /#/io.l5d.fs;\n/svc/web => /svc/web-v1;\n/svc/greeter => /svc/greeter-v1";

/// The processes the demo started; stopped (and reaped) on drop.
struct Processes(Vec<(String, Child)>);

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.start_kill();
        }
    }
}

impl Processes {
    /// Stops every process: SIGTERM, so that each shuts down cleanly, then SIGKILL for any
    /// still running after a few seconds.
    async fn stop(&mut self) {
        for (_, child) in &self.0 {
            if let Some(pid) = child.id() {
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
            }
        }
        for (name, child) in &mut self.0 {
            if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
                eprintln!("{name} did not stop within 5 s; killing it");
                let _ = child.kill().await;
            }
        }
        self.0.clear();
    }

    /// Resolves when any process exits, with its name.
    async fn any_exited(&mut self) -> String {
        loop {
            for (name, child) in &mut self.0 {
                if let Ok(Some(status)) = child.try_wait() {
                    return format!("{name} exited ({status})");
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn command(exe: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(exe);
    command.args(args).kill_on_drop(true).stdin(Stdio::null());
    command
}

/// Starts a sample service on a free port and returns the address it printed.
async fn start_sample(
    exe: &Path,
    processes: &mut Processes,
    name: &str,
    version: &str,
    downstream: Option<&str>,
    router: SocketAddr,
) -> Result<SocketAddr, String> {
    let router = router.to_string();
    let mut args =
        vec!["demo-service", "--name", name, "--version", version, "--listen", "127.0.0.1:0", "--router", &router];
    if let Some(downstream) = downstream {
        args.extend(["--downstream", downstream]);
    }
    let mut child = command(exe, &args).stdout(Stdio::piped()).spawn().map_err(|e| format!("starting {name}: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .map_err(|_| format!("{name} {version} did not start"))?
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    let addr = first
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("{name} {version} said {first:?}"))?;
    processes.0.push((format!("{name} {version}"), child));
    Ok(addr)
}

/// Waits until `url` answers 200.
async fn wait_ready(client: &Client<HttpConnector, Full<Bytes>>, url: &str, what: &str) -> Result<(), String> {
    for _ in 0..200 {
        let request = Request::get(url).body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
        if let Ok(response) = client.request(request).await
            && response.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("{what} did not become ready at {url}"))
}

async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<(http::StatusCode, String), String> {
    let response = client.request(request).await.map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).trim_end().to_string()))
}

/// Runs the demo until `shutdown` resolves (Ctrl-C), then stops everything it started.
pub async fn run(options: DemoOptions, shutdown: impl std::future::Future<Output = ()>) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding the waymark binary: {e}"))?;
    let (temp, dir) = match &options.data_dir {
        Some(dir) => (None, dir.clone()),
        None => {
            let temp = tempfile::Builder::new().prefix("waymark-demo-").tempdir().map_err(|e| e.to_string())?;
            let dir = temp.path().to_path_buf();
            (Some(temp), dir)
        }
    };
    let mut processes = Processes(Vec::new());
    let result = async {
        let started = start(&exe, &dir, &options, &mut processes).await?;
        println!("{}", instructions(&exe, &dir, &options, &started, temp.is_some() && !options.keep_data));
        tokio::select! {
            () = shutdown => println!("\nStopping..."),
            exited = processes.any_exited() => return Err(format!("{exited}; stopping the demo")),
        }
        Ok(())
    }
    .await;
    processes.stop().await;
    match temp {
        Some(temp) if options.keep_data => println!("Data kept in {}", temp.keep().display()),
        Some(temp) => drop(temp),
        None => {}
    }
    result
}

/// The addresses of the sample services.
struct Started {
    services: Vec<(String, SocketAddr)>,
}

async fn start(exe: &Path, dir: &Path, options: &DemoOptions, processes: &mut Processes) -> Result<Started, String> {
    let disco = dir.join("disco");
    let dtabs = dir.join("dtabs");
    for d in [&disco, &dtabs] {
        std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    let router: SocketAddr = ([127, 0, 0, 1], options.router_port).into();

    // The sample services, each in its own process; the io.l5d.fs namer finds them by file.
    let mut services = Vec::new();
    for (name, version, downstream) in [
        ("web", "v1", Some("greeter")),
        ("web", "v2", Some("greeter")),
        ("greeter", "v1", None),
        ("greeter", "v2", None),
    ] {
        let addr = start_sample(exe, processes, name, version, downstream, router).await?;
        let file = disco.join(format!("{name}-{version}"));
        std::fs::write(&file, format!("{} {}\n", addr.ip(), addr.port())).map_err(|e| e.to_string())?;
        services.push((format!("{name} {version}"), addr));
    }

    let namer_config = dir.join("namer.yaml");
    std::fs::write(
        &namer_config,
        format!(
            "storage:\n  kind: file\n  dir: {dtabs}\nnamers:\n  - kind: io.l5d.fs\n    root_dir: {disco}\n    poll_interval_ms: 500\n\
             interfaces:\n  - kind: io.l5d.httpController\n    port: {http}\n  - kind: io.l5d.mesh\n    port: {mesh}\n\
             admin:\n  port: {admin}\nlogging:\n  level: warn\n",
            dtabs = dtabs.display(),
            disco = disco.display(),
            http = options.namer_port,
            mesh = options.mesh_port,
            admin = options.namer_admin_port,
        ),
    )
    .map_err(|e| e.to_string())?;
    let namer = command(exe, &["namer", "--config", &namer_config.to_string_lossy()])
        .spawn()
        .map_err(|e| format!("starting the namer: {e}"))?;
    processes.0.push(("namer".into(), namer));

    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    wait_ready(&client, &format!("http://127.0.0.1:{}/ready", options.namer_admin_port), "the namer").await?;
    let seed = Request::put(format!("http://127.0.0.1:{}/api/1/dtabs/default", options.namer_port))
        .header(header::CONTENT_TYPE, "application/dtab")
        .header("waymark-author", "waymark demo")
        .header("waymark-message", "the demo's base dtab")
        .body(Full::new(Bytes::from(BASE_DTAB)))
        .map_err(|e| e.to_string())?;
    let (status, body) = send(&client, seed).await?;
    if !status.is_success() {
        return Err(format!("seeding the dtab: {status} {body}"));
    }

    let router_config = dir.join("router.yaml");
    std::fs::write(
        &router_config,
        format!(
            "listeners:\n  - port: {router}\nadmin:\n  port: {admin}\ninterpreter:\n  kind: mesh\n  dst: 127.0.0.1:{mesh}\n  namespace: default\n",
            router = options.router_port,
            admin = options.router_admin_port,
            mesh = options.mesh_port,
        ),
    )
    .map_err(|e| e.to_string())?;
    let router_process = command(exe, &["router", "--config", &router_config.to_string_lossy(), "--log", "warn"])
        .spawn()
        .map_err(|e| format!("starting the router: {e}"))?;
    processes.0.push(("router".into(), router_process));
    wait_ready(&client, &format!("http://127.0.0.1:{}/live", options.router_admin_port), "the router").await?;

    // One request through both hops before telling anyone to try it.
    let mut last = String::new();
    for _ in 0..100 {
        let request = Request::get(format!("http://{router}/"))
            .header(header::HOST, "web")
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        match send(&client, request).await {
            Ok((status, body)) if status.is_success() && body.starts_with("web v1 -> greeter v1") => {
                return Ok(Started { services });
            }
            Ok((status, body)) => last = format!("{status} {body}"),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("a request through the router did not reach web v1: {last}"))
}

fn instructions(exe: &Path, dir: &Path, options: &DemoOptions, started: &Started, removed: bool) -> String {
    let bin = std::env::current_dir()
        .ok()
        .and_then(|cwd| exe.strip_prefix(&cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| exe.to_path_buf());
    let bin = bin.display();
    let router = format!("http://127.0.0.1:{}", options.router_port);
    let namer = format!("http://127.0.0.1:{}", options.namer_port);
    let services: Vec<String> = started.services.iter().map(|(n, a)| format!("{n} on {a}")).collect();
    let fate = if removed { "removed on exit" } else { "kept" };
    format!(
        r#"
Waymark demo: a namer, a router and four sample services are running.

  router     {router}        admin http://127.0.0.1:{router_admin}/metrics
  namer      {namer}        gRPC 127.0.0.1:{mesh}   admin http://127.0.0.1:{namer_admin}/metrics
  services   {services}
  data       {dir} ({fate})

The namespace "default" holds this dtab; the io.l5d.fs namer finds each service by its file:

  /svc => /#/io.l5d.fs;
  /svc/web => /svc/web-v1;
  /svc/greeter => /svc/greeter-v1

Try it:

  # 1. A request: web v1 answers, after calling greeter through the router (a second hop).
  curl -s -H 'Host: web' {router}/

  # 2. A canary by header: web v2 answers, and the override reaches the second hop.
  curl -s -H 'Host: web' -H 'l5d-dtab: /svc/web => /svc/web-v2' {router}/

  # 3. Send 10% of all traffic to web v2.
  {bin} dtab update --base-url {namer} default - <<'EOF'
  /svc => /#/io.l5d.fs;
  /svc/web => 0.9 * /svc/web-v1 & 0.1 * /svc/web-v2;
  /svc/greeter => /svc/greeter-v1
  EOF

  # 4. See the split.
  for i in $(seq 200); do curl -s -H 'Host: web' {router}/; done | sort | uniq -c

  # Why does a request go where it goes?
  {bin} delegate --base-url {namer} default /svc/web
  {bin} dtab history --base-url {namer} default

Press Ctrl-C to stop everything."#,
        router_admin = options.router_admin_port,
        mesh = options.mesh_port,
        namer_admin = options.namer_admin_port,
        services = services.join(", "),
        dir = dir.display(),
    )
}
