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
        Command::Dtab(args) => waymark_cli::run_dtab(args),
        Command::Delegate(args) => waymark_cli::run_delegate(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}

fn fail(e: impl std::fmt::Display) -> waymark_cli::Failure {
    waymark_cli::Failure::new(waymark_cli::Exit::Error, e.to_string())
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
        let app = waymark_namer::NamerApp::build(config, Some(log)).await.map_err(fail)?;
        app.run(shutdown_signal()).await;
        Ok(())
    })
}
