//! `waymark`: the namer, the router and the tools, in one binary. This file only parses the
//! command line and dispatches; each subcommand lives in its crate.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// A dtab-routed service mesh.
#[derive(Debug, Parser)]
#[command(name = "waymark", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the namer: dtab storage, name resolution, namerd's HTTP API and the io.l5d.mesh gRPC API.
    Namer(ServerArgs),
    /// Format dtab files, and manage the dtabs a namer stores (namerctl-compatible).
    Dtab(waymark_cli::DtabArgs),
    /// Explain how a path resolves through a dtab, offline or through the namer.
    Delegate(waymark_cli::DelegateArgs),
    /// Run the router: the HTTP/1.1, HTTP/2 and gRPC proxy.
    Router(RouterArgs),
    /// Start a namer, a router and sample services on this machine, and show what to try.
    Demo(DemoArgs),
    /// A sample service for the demo and the end-to-end tests.
    #[command(hide = true)]
    DemoService(DemoServiceArgs),
}

#[derive(Debug, Args)]
struct RouterArgs {
    /// The YAML configuration; without it, the documented defaults.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Log output format.
    #[arg(long, value_enum, default_value_t = LogFormatArg::Plain, env = "WAYMARK_LOG_FORMAT")]
    log_format: LogFormatArg,
    /// Initial log filter (changeable at run time on the admin port, `/logging`).
    #[arg(long, default_value = "info", env = "WAYMARK_LOG")]
    log: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Plain,
    Json,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// The router's port.
    #[arg(long, default_value_t = 4140)]
    router_port: u16,
    /// The router's admin port.
    #[arg(long, default_value_t = 9990)]
    router_admin_port: u16,
    /// The namer's HTTP API port.
    #[arg(long, default_value_t = 4180)]
    namer_port: u16,
    /// The namer's gRPC API port.
    #[arg(long, default_value_t = 4321)]
    mesh_port: u16,
    /// The namer's admin port.
    #[arg(long, default_value_t = 9991)]
    namer_admin_port: u16,
    /// Keep dtabs, service files and configurations in this directory (kept on exit).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// Keep the temporary data directory on exit.
    #[arg(long)]
    keep_data: bool,
}

#[derive(Debug, Args)]
struct DemoServiceArgs {
    /// The service's name.
    #[arg(long)]
    name: String,
    /// The service's version.
    #[arg(long)]
    version: String,
    /// Where to listen; the address is printed as `listening on ADDR`.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
    /// The service to call on every request, through the router.
    #[arg(long)]
    downstream: Option<String>,
    /// The router's address.
    #[arg(long, default_value = "127.0.0.1:4140")]
    router: std::net::SocketAddr,
}

#[derive(Debug, Args)]
struct ServerArgs {
    /// The YAML configuration file (`-` for standard input). Without one, the defaults apply.
    #[arg(long, short)]
    config: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Namer(args) => run_namer(args),
        Command::Router(args) => run_router(args),
        Command::Dtab(args) => waymark_cli::run_dtab(args),
        Command::Delegate(args) => waymark_cli::run_delegate(args),
        Command::Demo(args) => run_demo(args),
        Command::DemoService(args) => run_demo_service(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}

fn fail(e: impl std::fmt::Display) -> waymark_cli::Failure {
    waymark_cli::Failure::new(waymark_cli::Exit::Error, e.to_string())
}

/// A failure reported with every cause in its chain (causes a message already includes are
/// not repeated).
fn fail_with_causes(e: &(dyn std::error::Error + 'static)) -> waymark_cli::Failure {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    waymark_cli::Failure::new(waymark_cli::Exit::Error, text)
}

fn runtime() -> Result<tokio::runtime::Runtime, waymark_cli::Failure> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(fail)
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

fn run_namer(args: ServerArgs) -> Result<(), waymark_cli::Failure> {
    let config = match &args.config {
        Some(file) => waymark_namer::NamerConfig::load(file).map_err(fail)?,
        None => waymark_namer::NamerConfig::default(),
    };
    let log = waymark_admin::init_logging(&config.logging.level, config.logging.format).map_err(fail)?;
    runtime()?.block_on(async {
        let app = waymark_namer::NamerApp::build(config, Some(log)).await.map_err(|e| fail_with_causes(&e))?;
        app.run(shutdown_signal()).await;
        Ok(())
    })
}

/// The admin crate's log control, as the router's admin port drives it.
struct RouterLog(waymark_admin::LogControl);

impl waymark_router::LogControl for RouterLog {
    fn current(&self) -> String {
        self.0.current()
    }

    fn set(&self, filter: &str) -> Result<(), String> {
        self.0.set(filter)
    }
}

fn run_router(args: RouterArgs) -> Result<(), waymark_cli::Failure> {
    let format = match args.log_format {
        LogFormatArg::Plain => waymark_admin::LogFormat::Plain,
        LogFormatArg::Json => waymark_admin::LogFormat::Json,
    };
    let log = waymark_admin::init_logging(&args.log, format).map_err(fail)?;
    let config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| fail(format!("reading {}: {e}", path.display())))?;
            waymark_router::RouterConfig::from_yaml(&text).map_err(|e| fail(format!("{}: {e}", path.display())))?
        }
        None => waymark_router::RouterConfig::default(),
    };
    // One worker: a current-thread runtime does the same work without cross-thread
    // scheduling (no work stealing, no wake-ups through other threads).
    let mut runtime = match config.worker_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(threads) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(threads);
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = runtime.enable_all().build().map_err(fail)?;
    runtime.block_on(async move {
        let app = waymark_router::App::build(config)
            .await
            .map_err(|e| fail_with_causes(&e))?
            .with_log_control(Arc::new(RouterLog(log)));
        app.run(shutdown_signal()).await.map_err(fail)
    })
}

fn run_demo(args: DemoArgs) -> Result<(), waymark_cli::Failure> {
    let options = waymark_demo::DemoOptions {
        router_port: args.router_port,
        router_admin_port: args.router_admin_port,
        namer_port: args.namer_port,
        mesh_port: args.mesh_port,
        namer_admin_port: args.namer_admin_port,
        data_dir: args.data_dir,
        keep_data: args.keep_data,
    };
    runtime()?.block_on(waymark_demo::run(options, shutdown_signal())).map_err(fail)
}

fn run_demo_service(args: DemoServiceArgs) -> Result<(), waymark_cli::Failure> {
    let service = waymark_demo::SampleService {
        name: args.name,
        version: args.version,
        downstream: args.downstream,
        router: args.router,
    };
    runtime()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen).await.map_err(fail)?;
        println!("listening on {}", listener.local_addr().map_err(fail)?);
        tokio::select! {
            served = service.serve(listener) => served.map_err(fail),
            () = shutdown_signal() => Ok(()),
        }
    })
}
