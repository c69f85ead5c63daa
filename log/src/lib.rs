//! The logging set-up of every Waymark process: `RUST_LOG` or a level given on the command
//! line, plain or JSON lines on standard error, and a filter that an admin port can read and
//! change while the process runs. A crate of its own so that the proxy binary gets logging
//! without the admin server's dependencies (axum).

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, reload};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Plain,
    /// One JSON object per line.
    Json,
}

/// Changes the process's log filter at run time.
#[derive(Clone)]
pub struct LogControl {
    handle: reload::Handle<EnvFilter, tracing_subscriber::Registry>,
}

/// Installs the process's logger: `RUST_LOG` if set, else `level`; plain or JSON lines on
/// standard error. Call once per process, before anything logs.
pub fn init_logging(level: &str, format: LogFormat) -> Result<LogControl, String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => EnvFilter::try_new(env),
        _ => EnvFilter::try_new(level),
    }
    .map_err(|e| format!("invalid log filter: {e}"))?;
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Plain => registry.with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr)).try_init(),
        LogFormat::Json => {
            registry.with(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr)).try_init()
        }
    };
    result.map_err(|e| format!("cannot install the logger: {e}"))?;
    Ok(LogControl { handle })
}

impl LogControl {
    /// Replaces the log filter.
    pub fn set(&self, filter: &str) -> Result<(), String> {
        let filter = EnvFilter::try_new(filter.trim()).map_err(|e| format!("invalid log filter: {e}"))?;
        self.handle.reload(filter).map_err(|e| e.to_string())
    }

    /// The current log filter.
    pub fn current(&self) -> String {
        self.handle.with_current(|f| f.to_string()).unwrap_or_default()
    }
}

impl std::fmt::Debug for LogControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogControl").field("filter", &self.current()).finish()
    }
}
