//! `waymark`: the namer, the router and the tools, in one binary. This file only parses the
//! command line and dispatches; each subcommand lives in its crate.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

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
    /// Run the router: the HTTP/1.1, HTTP/2 and gRPC proxy (also its own binary, `waymark-proxy`).
    Router(waymark_proxy::RouterArgs),
    /// Start a namer, a router and sample services on this machine, and show what to try.
    Demo(DemoArgs),
    /// A sample service for the demo and the end-to-end tests.
    #[command(hide = true)]
    DemoService(DemoServiceArgs),
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

fn run_namer(args: ServerArgs) -> Result<(), waymark_cli::Failure> {
    let config = match &args.config {
        Some(file) => waymark_namer::NamerConfig::load(file).map_err(fail)?,
        None => waymark_namer::NamerConfig::default(),
    };
    let log = waymark_admin::init_logging(&config.logging.level, config.logging.format).map_err(fail)?;
    runtime()?.block_on(async {
        let app = waymark_namer::NamerApp::build(config, Some(log)).await.map_err(|e| fail_with_causes(&e))?;
        app.run(waymark_proxy::shutdown_signal()).await;
        Ok(())
    })
}

fn run_router(args: waymark_proxy::RouterArgs) -> Result<(), waymark_cli::Failure> {
    waymark_proxy::run(args).map_err(fail)
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
    runtime()?.block_on(waymark_demo::run(options, waymark_proxy::shutdown_signal())).map_err(fail)
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
            () = waymark_proxy::shutdown_signal() => Ok(()),
        }
    })
}
