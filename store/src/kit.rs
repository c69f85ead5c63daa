//! What every backend is built from, for backends in other crates (the Kubernetes store) as
//! for the ones here: the [`WatchHub`] that serves [`DtabStore::watch`](crate::DtabStore::watch)
//! and [`DtabStore::watch_list`](crate::DtabStore::watch_list) from one published state; the
//! canonical text a dtab is stored as ([`canonical_text`], [`parse_stored`]); the
//! [`HistoryRecord`] a history entry is stored as; and [`cut_page`] for history pages.
//! Wrap a backend in [`LimitedStore`](crate::LimitedStore) and
//! [`InstrumentedStore`](crate::InstrumentedStore) as [`StoreConfig`](crate::StoreConfig)
//! does, and run the [conformance suite](crate::conformance) on it (feature `conformance`).

pub use crate::canonical::{HistoryRecord, canonical_text, parse_stored};
pub use crate::hub::{HubGuard, WatchHub};
pub use crate::store::cut_page;
