//! The router: an HTTP/1.1, HTTP/2 and gRPC proxy routed by dtabs.
//!
//! A request is named (`/svc/web`), its dtab override is read from `l5d-ctx-dtab` and
//! `l5d-dtab`, the name is bound through the namer (or a standalone interpreter) with the
//! namespace's dtab followed by the override, a destination is chosen in the bound tree and
//! among its endpoints, and the request is forwarded with the override carried on to the
//! next hop. See [`App`] for the entry point and [`RouterConfig`] for every setting.

mod admin;
mod app;
mod balance;
mod body;
mod caller;
mod client;
mod config;
mod conn;
mod context;
mod errors;
mod identify;
mod mesh;
mod metrics;
mod naming;
mod outcome;
mod proxy;
mod retry;
mod routes;
mod server;
mod sync;

pub use admin::{AdminConfig, LogControl};
pub use app::{App, AppError};
pub use balance::{FailureAccrualConfig, LoadBalancerConfig};
pub use body::ResponseBody;
pub use client::{ClientConfig, UpstreamProtocol};
pub use config::{ConfigError, RouterConfig};
pub use conn::{ConnectionInfo, TlsPeer};
pub use identify::IdentifierConfig;
pub use naming::{Delegator, InterpreterConfig, NamerStatus, Naming};
pub use retry::{BudgetConfig, ClassifierConfig, RetriesConfig, ServiceConfig};
pub use routes::BindingCacheConfig;
pub use server::ListenerConfig;
