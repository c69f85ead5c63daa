//! The Kubernetes API through the real `kube` client, against the fake API server: the fake's
//! semantics (CRUD, conflicts, pagination, selectors, watches, patches, reviews, faults), the
//! client configuration of `waymark_k8s::client`, and the watched sets of `waymark_k8s::watch`.
//!
//! One fake serves the whole binary; each test works in namespaces of its own. Tests that
//! compact the history or stop the server start a private one.

mod client_config;
mod fake_semantics;
mod watched_sets;

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use waymark_test_support::kube::FakeApiServer;

/// How long a test waits for something that should happen promptly (generous: the machine is
/// shared).
const DEADLINE: Duration = Duration::from_secs(30);

/// A client for `fake`, configured directly (the configuration search is tested on its own).
fn client(fake: &FakeApiServer) -> Client {
    let config = kube::Config::new(fake.url().parse().expect("the fake's URL"));
    Client::try_from(config).expect("a client")
}

/// Creates a namespace for one test.
async fn namespace(client: &Client, name: &str) -> String {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let object =
        Namespace { metadata: ObjectMeta { name: Some(name.into()), ..ObjectMeta::default() }, ..Namespace::default() };
    namespaces.create(&PostParams::default(), &object).await.expect("create the test's namespace");
    name.to_string()
}

/// Polls `check` until it returns `Some`, or fails the test after [`DEADLINE`].
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The API error inside a kube error, or a panic naming what came instead.
fn api_error<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> kube::core::Status {
    match result {
        Err(kube::Error::Api(status)) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}
