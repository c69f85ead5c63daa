//! The one error type every store returns.

use crate::namespace::{InvalidNamespace, Namespace};

/// What went wrong with a store operation. The namer maps each variant to one HTTP and one
/// gRPC status, so the variants are few and stable; the text explains the cause to a person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The namespace does not exist.
    #[error("namespace {0} does not exist")]
    NotFound(Namespace),
    /// `create` found the namespace already there.
    #[error("the namespace already exists")]
    Exists,
    /// `update` was given a version that is no longer current: someone else wrote first.
    #[error("the namespace changed since the given version was read")]
    Conflict,
    /// A name, dtab or piece of configuration that cannot be accepted, or backing data that
    /// does not parse.
    #[error("invalid: {0}")]
    Invalid(String),
    /// The backing store cannot be reached or failed; retrying later may succeed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The write would pass one of the store's limits (namespaces, bytes); the text says which.
    #[error("store limit reached: {0}")]
    LimitReached(String),
}

impl StoreError {
    /// A short, stable name for the variant, used as a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::NotFound(_) => "not_found",
            StoreError::Exists => "exists",
            StoreError::Conflict => "conflict",
            StoreError::Invalid(_) => "invalid",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::LimitReached(_) => "limit_reached",
        }
    }
}

impl From<InvalidNamespace> for StoreError {
    fn from(e: InvalidNamespace) -> Self {
        StoreError::Invalid(e.to_string())
    }
}
