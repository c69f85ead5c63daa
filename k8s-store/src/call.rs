//! One request to the API server: under a timeout, its failure classified, and the store's
//! health told how it went.

use std::sync::Arc;
use std::time::Duration;

use waymark_store::{Namespace, StoreError};

/// How requests run.
#[derive(Clone)]
pub(crate) struct Call {
    /// What is asked, for messages: `the API server at <url>`.
    pub(crate) what: Arc<str>,
    pub(crate) timeout: Duration,
    /// Told of every outcome: `Some(why)` when the API server could not be used.
    pub(crate) observe: Observer,
}

/// What is told of every request's outcome.
pub(crate) type Observer = Arc<dyn Fn(Option<&str>) + Send + Sync>;

/// How a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// 404.
    NotFound,
    /// 409 `Conflict`: a stale `resourceVersion` or a failed precondition.
    Conflict,
    /// 409 `AlreadyExists`.
    Exists,
    /// What the request carried cannot be accepted (400, 413, 422).
    Invalid(String),
    /// The API server cannot be reached, did not answer in time, failed, or refuses this
    /// store (401, 403: a deployment problem, not the caller's).
    Unavailable(String),
}

impl Call {
    /// Runs a request under the timeout.
    pub(crate) async fn run<T>(&self, request: impl Future<Output = Result<T, kube::Error>>) -> Result<T, Failure> {
        let result = match tokio::time::timeout(self.timeout, request).await {
            Ok(result) => result.map_err(|e| self.classify(e)),
            Err(_) => Err(Failure::Unavailable(format!(
                "{} did not answer within {} ms",
                self.what,
                self.timeout.as_millis()
            ))),
        };
        match &result {
            Err(Failure::Unavailable(why)) => (self.observe)(Some(why)),
            _ => (self.observe)(None),
        }
        result
    }

    fn classify(&self, error: kube::Error) -> Failure {
        match error {
            kube::Error::Api(status) => match (status.code, status.reason.as_str()) {
                (404, _) => Failure::NotFound,
                (409, "AlreadyExists") => Failure::Exists,
                (409, _) => Failure::Conflict,
                (400 | 413 | 422, _) => Failure::Invalid(format!("the API server refused it: {}", status.message)),
                (code, _) => Failure::Unavailable(format!("{} answered {code}: {}", self.what, status.message)),
            },
            other => Failure::Unavailable(format!("{}: {}", self.what, error_chain(&other))),
        }
    }
}

impl Failure {
    /// The store error this failure is, for an operation on `ns`. A conflict here is a
    /// stale version and an existing object a failed create; callers that mean otherwise
    /// match the failure first.
    pub(crate) fn store(self, ns: &Namespace) -> StoreError {
        match self {
            Failure::NotFound => StoreError::NotFound(ns.clone()),
            Failure::Conflict => StoreError::Conflict,
            Failure::Exists => StoreError::Exists,
            Failure::Invalid(why) => StoreError::Invalid(why),
            Failure::Unavailable(why) => StoreError::Unavailable(why),
        }
    }
}

/// An error and its causes, for messages.
fn error_chain(error: &dyn std::error::Error) -> String {
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
