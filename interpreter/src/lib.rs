//! Namers and the interpreter: the reactive half of naming.
//!
//! The `waymark-dtab` crate binds a name once, from state it is given. This crate keeps
//! bindings current: it watches the namespace's dtab and the namers a binding consulted, binds
//! again when any of them changes, and resolves bound ids to address sets (DNS, files, static
//! configuration). Each binding and each address set is computed once however many consumers
//! watch it, and dropped when nobody has watched it for a while.
//!
//! The interpreter does not choose which kinds of namer exist: [`NamerKind`] is how a service
//! composes its own set. [`BuiltinNamer`] is the small set every service may use (files,
//! static addresses, rewriting; DNS for `/$/inet` is always there); the namer service adds
//! Kubernetes beside them, so that a router, which depends on this crate, never links a
//! Kubernetes client.
//!
//! Consumers see everything through [`Resolver`], which the router also implements over the
//! namer's gRPC API, so that a router can bind locally (standalone mode) or through a namer
//! with the same code.

mod dns;
mod dtabs;
mod interpreter;
pub mod namers;
mod resolver;

pub use dns::{Dns, DnsFailure};
pub use dtabs::{DtabSource, FixedDtabs};
pub use interpreter::{FromConfigError, Interpreter, InterpreterMetrics, InterpreterOptions, NamespaceResolver};
pub use namers::{BuiltinNamer, ConfigProblem, NamerHealth, NamerKind, NamerStartError, ServiceNamer};
pub use resolver::{BindState, Resolver};
