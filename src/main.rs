//! `waymark`: the namer, the router and the tools, in one binary. This file only parses the
//! command line and dispatches; each subcommand lives in its crate.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// A dtab-routed service mesh.
#[derive(Debug, Parser)]
#[command(name = "waymark", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Format and manage dtabs.
    Dtab {
        #[command(subcommand)]
        command: waymark_cli::DtabCommand,
    },
    /// Explain how a path resolves through a dtab.
    Delegate(waymark_cli::DelegateArgs),
    /// Run the router: the HTTP/1.1, HTTP/2 and gRPC proxy.
    Router(RouterArgs),
}

#[derive(Debug, clap::Args)]
struct RouterArgs {
    /// The YAML configuration; without it, the documented defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Log output format.
    #[arg(long, value_enum, default_value_t = LogFormat::Plain, env = "WAYMARK_LOG_FORMAT")]
    log_format: LogFormat,
    /// Initial log filter (changeable at run time on the admin port, `/logging`).
    #[arg(long, default_value = "info", env = "WAYMARK_LOG")]
    log: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Plain,
    Json,
}

/// The log filter behind a reload handle, as the admin port's log control.
struct ReloadableFilter(reload::Handle<EnvFilter, Registry>);

impl waymark_router::LogControl for ReloadableFilter {
    fn current(&self) -> String {
        self.0.with_current(|f| f.to_string()).unwrap_or_default()
    }

    fn set(&self, filter: &str) -> Result<(), String> {
        let filter = EnvFilter::try_new(filter).map_err(|e| e.to_string())?;
        self.0.reload(filter).map_err(|e| e.to_string())
    }
}

fn init_logging(format: LogFormat, filter: &str) -> anyhow::Result<ReloadableFilter> {
    let filter = EnvFilter::try_new(filter).context("invalid log filter")?;
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Plain => registry.with(tracing_subscriber::fmt::layer()).init(),
        LogFormat::Json => registry.with(tracing_subscriber::fmt::layer().json()).init(),
    }
    Ok(ReloadableFilter(handle))
}

/// Resolves on SIGTERM or ctrl-c.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

fn router(args: RouterArgs) -> anyhow::Result<()> {
    let log = init_logging(args.log_format, &args.log)?;
    let config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            waymark_router::RouterConfig::from_yaml(&text).with_context(|| format!("in {}", path.display()))?
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
    let runtime = runtime.enable_all().build().context("starting the runtime")?;
    runtime.block_on(async move {
        let app = waymark_router::App::build(config).await?.with_log_control(Arc::new(log));
        app.run(shutdown_signal()).await?;
        Ok(())
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Dtab { command } => waymark_cli::run_dtab(command),
        Command::Delegate(args) => waymark_cli::run_delegate(args),
        Command::Router(args) => {
            return match router(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("waymark router: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}
