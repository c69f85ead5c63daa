//! Delegation tables (dtabs), the naming language of Finagle, Linkerd 1 and namerd.
//!
//! A dtab is an ordered list of rewrite rules (`/svc => /#/io.l5d.fs`) that turns a logical
//! name such as `/svc/web` into concrete, bound names through namers. This crate holds the
//! language and its semantics, exactly as the reference implementation behaves: the types,
//! a parser with precise error positions, the canonical printer, simplification and
//! evaluation of name trees, one-step lookup, recursive binding and delegation (explanation)
//! trees, the built-in `/$/` namers and namerd's JSON shapes.
//!
//! It is pure: no I/O and no async runtime. Namers are reached through the [`Namer`] trait and
//! answer from state they already hold; binding reports which namer inputs it used so that a
//! service can watch those and bind again when they change.
//!
//! ```
//! use waymark_dtab::{bind_path, BindOptions, Dtab, Namers, Path};
//!
//! let dtab: Dtab = "/svc => /$/inet/127.0.0.1; /svc/web => 0.9 * /svc/8080 & 0.1 * /svc/8081".parse()?;
//! let binding = bind_path(&dtab, &Namers::new(), &"/svc/web".parse::<Path>()?, BindOptions::default());
//! assert_eq!(binding.tree().unwrap().to_string(), "0.90*/$/inet/127.0.0.1/8080 & 0.10*/$/inet/127.0.0.1/8081");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod addr;
mod bind;
mod delegate;
mod dtab;
pub mod global;
pub mod json;
mod parse;
mod path;
mod tree;
mod work;

pub use addr::{ADDR_WEIGHT_KEY, APP_PROTOCOL_KEY, Addr, Address};
pub use bind::{
    Alternatives, BindError, BindOptions, BindOutcome, Binding, BoundLeaf, BoundName, DEFAULT_MAX_DEPTH, Lookup,
    MAX_LOOKUPS, MAX_RECURSION, MountError, Name, Namer, NamerLookup, Namers, bind, bind_path,
};
pub use delegate::{
    DEFAULT_MAX_DELEGATION_BYTES, DelegateError, DelegateLimits, DelegateNode, DelegateTree, SHARED_DENTRY_BYTES,
    SharedDentries, delegate, delegate_within,
};
pub use dtab::{Dentry, Dtab};
pub use parse::{MAX_INPUT_BYTES, MAX_NESTING, ParseError};
pub use path::{EmptyLabel, Label, Path, Prefix, PrefixElem, is_label_char};
pub use tree::{InvalidWeight, NameTree, Weight, Weighted};
pub use work::MAX_WORK;
