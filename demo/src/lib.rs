//! `waymark demo`: a namer, a router and sample services on one machine, so that a new user
//! sees header canaries, weighted shifts and live dtab updates working within a minute; and
//! the sample services themselves, which the end-to-end tests use as upstreams.

mod run;
mod sample;

pub use run::{BASE_DTAB, DemoOptions, run};
pub use sample::{SERVED_BY, SampleService};
