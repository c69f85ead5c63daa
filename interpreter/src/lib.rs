//! Namers and the interpreter: the reactive half of naming.
//!
//! The `waymark-dtab` crate binds a name once, from state it is given. This crate keeps
//! bindings current: it watches the namespace's dtab and the namers a binding consulted, binds
//! again when any of them changes, and resolves bound ids to address sets (DNS, files, static
//! configuration). Each binding and each address set is computed once however many consumers
//! watch it, and dropped when nobody has watched it for a while.
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
pub use interpreter::{Interpreter, InterpreterMetrics, InterpreterOptions, NamespaceResolver};
pub use namers::{ConfigProblem, NamerConfig, NamerHealth, ServiceNamer};
pub use resolver::{BindState, Resolver};
