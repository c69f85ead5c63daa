//! The router as a process: its command line, logging and runtime, shared by the
//! `waymark-proxy` binary (the router alone, for sidecars and edges, with none of the namer,
//! the stores, their clients or the CLI in its dependency tree) and `waymark router`.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use waymark_log::{LogControl, LogFormat};

/// The router's command line.
#[derive(Debug, Args)]
pub struct RouterArgs {
    /// The YAML configuration; without it, the documented defaults.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Log output format.
    #[arg(long, value_enum, default_value_t = LogFormatArg::Plain, env = "WAYMARK_LOG_FORMAT")]
    pub log_format: LogFormatArg,
    /// Initial log filter (changeable at run time on the admin port, `/logging`).
    #[arg(long, default_value = "info", env = "WAYMARK_LOG")]
    pub log: String,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormatArg {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// The log filter as the router's admin port drives it.
struct RouterLog(LogControl);

impl waymark_router::LogControl for RouterLog {
    fn current(&self) -> String {
        self.0.current()
    }

    fn set(&self, filter: &str) -> Result<(), String> {
        self.0.set(filter)
    }
}

/// Runs the router until SIGTERM or Ctrl-C, then drains it.
pub fn run(args: RouterArgs) -> Result<(), String> {
    let format = match args.log_format {
        LogFormatArg::Plain => LogFormat::Plain,
        LogFormatArg::Json => LogFormat::Json,
    };
    let log = waymark_log::init_logging(&args.log, format)?;
    let config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
            waymark_router::RouterConfig::from_yaml(&text).map_err(|e| format!("{}: {e}", path.display()))?
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
    let runtime = runtime.enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let app = waymark_router::App::build(config).await.map_err(|e| with_causes(&e))?;
        let app = app.with_log_control(Arc::new(RouterLog(log)));
        app.run(shutdown_signal()).await.map_err(|e| e.to_string())
    })
}

/// `error` and every cause under it that its message does not already say, as `a: b: c`.
fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
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
