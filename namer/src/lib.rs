//! The namer: the central naming service of a Waymark mesh, and a drop-in replacement for
//! namerd.
//!
//! It keeps dtabs in a store (memory, files or etcd), binds names through them and the
//! configured namers, and serves the results as watches over namerd's HTTP API and Linkerd 1's
//! `io.l5d.mesh` gRPC API, which Waymark routers and Linkerd 1 routers use. [`NamerApp`]
//! builds everything from a [`config::NamerConfig`] and runs it until shutdown.

pub mod app;
pub mod config;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod namers;
pub mod serve;
pub mod source;

pub use app::NamerApp;
pub use config::NamerConfig;
