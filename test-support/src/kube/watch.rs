//! Watches: a chunked stream of `{"type", "object"}` documents. From a resourceVersion it
//! replays the history after it (or sends one 410 `Expired` ERROR event when that is
//! compacted); without one, or with `sendInitialEvents`, it starts with synthetic ADDED
//! events. Bookmarks, `timeoutSeconds`, selectors (objects that stop matching are DELETED)
//! and test-triggered closes behave as the API server's watch cache does.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use http::{Response, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::handler::{Body, RequestInfo};
use super::kinds::Kind;
use super::status::ApiError;
use super::store::{Change, ListScope, matches, served};
use super::{Shared, WatchRegistration};

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum WatchStart {
    /// Synthetic ADDED events for the current state, then changes. The handler has waited
    /// for the store to reach `at_least`.
    Initial { at_least: Option<u64> },
    /// Only changes after this version.
    After(u64),
}

/// A watch request, validated.
#[derive(Debug, Clone)]
pub(crate) struct WatchSpec {
    pub(crate) version: String,
    pub(crate) scope: ListScope,
    pub(crate) start: WatchStart,
    pub(crate) send_initial_events: bool,
    pub(crate) bookmarks: bool,
    pub(crate) timeout: Option<Duration>,
}

/// The annotation that marks the end of a streaming list's initial events.
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";
/// How many encoded events may wait for a slow client before the watch stops reading history.
const BUFFERED_EVENTS: usize = 256;

/// Starts a watch and returns its streaming response.
pub(crate) fn respond(shared: Arc<Shared>, kind: Arc<Kind>, spec: WatchSpec, info: RequestInfo) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(BUFFERED_EVENTS);
    // Subscribed before the watch counts as open, so that a close right after sees it.
    let close = shared.close_tx.subscribe();
    let registration = shared.register_watch(info.clone());
    tokio::spawn(run(shared, kind, spec, info, tx, close, registration));
    let body = BodyExt::boxed(StreamBody::new(
        ReceiverStream::new(rx).map(|bytes| Ok::<_, std::io::Error>(Frame::data(bytes))),
    ));
    Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(body)
        .expect("a valid response")
}

fn event(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).expect("JSON values serialise");
    line.push(b'\n');
    Bytes::from(line)
}

fn bookmark(kind: &Kind, version: &str, rv: u64, initial_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
    if initial_end {
        metadata["annotations"] = json!({INITIAL_EVENTS_END: "true"});
    }
    event("BOOKMARK", &json!({"kind": kind.kind, "apiVersion": kind.api_version(version), "metadata": metadata}))
}

fn expired(rv: u64, compacted: u64) -> Bytes {
    event("ERROR", &ApiError::expired(format!("too old resource version: {rv} ({compacted})")).to_status())
}

/// The event a change makes for this watch, if any.
fn change_event(kind: &Kind, spec: &WatchSpec, change: &Change) -> Option<Bytes> {
    if change.key.group != kind.group || change.key.resource != kind.plural {
        return None;
    }
    if spec.scope.namespace.as_deref().is_some_and(|ns| ns != change.key.namespace) {
        return None;
    }
    let passes = |o: &Option<Arc<Value>>| o.as_deref().is_some_and(|o| matches(kind, &spec.version, &spec.scope, o));
    let (before, after) = (passes(&change.before), passes(&change.after));
    match (&change.after, before, after) {
        (Some(object), false, true) => Some(event("ADDED", &served(object, kind, &spec.version))),
        (Some(object), true, true) => Some(event("MODIFIED", &served(object, kind, &spec.version))),
        (_, true, false) => {
            // The last state it matched in, at the version of the change that ended that.
            let mut gone = served(change.before.as_deref().expect("it matched"), kind, &spec.version);
            gone["metadata"]["resourceVersion"] = json!(change.rv.to_string());
            Some(event("DELETED", &gone))
        }
        _ => None,
    }
}

async fn run(
    shared: Arc<Shared>,
    kind: Arc<Kind>,
    spec: WatchSpec,
    info: RequestInfo,
    tx: mpsc::Sender<Bytes>,
    mut close: broadcast::Receiver<super::RequestFilter>,
    _registration: WatchRegistration,
) {
    let deadline = spec.timeout.map(|t| tokio::time::Instant::now() + t);
    let start = {
        let state = shared.state.lock().expect("state lock");
        let head_rx = state.subscribe();
        match spec.start {
            WatchStart::After(rv) if rv < state.compacted() => Err(expired(rv, state.compacted())),
            WatchStart::After(rv) => Ok((head_rx, rv, Vec::new())),
            WatchStart::Initial { .. } => {
                let at = state.head();
                let objects =
                    state.objects_at(&kind, spec.scope.namespace.as_deref(), at).expect("the head is never compacted");
                let mut events: Vec<Bytes> = objects
                    .values()
                    .filter(|o| matches(&kind, &spec.version, &spec.scope, o))
                    .map(|o| event("ADDED", &served(o, &kind, &spec.version)))
                    .collect();
                if spec.send_initial_events {
                    events.push(bookmark(&kind, &spec.version, at, true));
                }
                Ok((head_rx, at, events))
            }
        }
    };
    let (mut head_rx, mut cursor, initial) = match start {
        Ok(start) => start,
        Err(error) => {
            let _ = tx.send(error).await;
            return;
        }
    };
    for line in initial {
        if tx.send(line).await.is_err() {
            return;
        }
    }
    let mut bookmark_timer = tokio::time::interval(shared.options.bookmark_interval);
    bookmark_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    bookmark_timer.reset();
    loop {
        let batch = {
            let state = shared.state.lock().expect("state lock");
            if state.registry.get(&kind.group, &kind.plural).is_none() {
                // The CRD is gone, and its API with it.
                return;
            }
            head_rx.borrow_and_update();
            state.changes_since(cursor)
        };
        match batch {
            Err(compacted) => {
                let _ = tx.send(expired(cursor, compacted.0)).await;
                return;
            }
            Ok(changes) => {
                for change in changes {
                    cursor = change.rv;
                    if let Some(line) = change_event(&kind, &spec, &change)
                        && tx.send(line).await.is_err()
                    {
                        return;
                    }
                }
            }
        }
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = head_rx.changed() => if changed.is_err() { return },
            _ = bookmark_timer.tick(), if spec.bookmarks => {
                let head = *head_rx.borrow();
                if cursor <= head && tx.send(bookmark(&kind, &spec.version, cursor, false)).await.is_err() {
                    return;
                }
            }
            _ = sleep => {
                if spec.bookmarks {
                    let _ = tx.send(bookmark(&kind, &spec.version, cursor, false)).await;
                }
                return;
            }
            closed = close.recv() => match closed {
                Ok(filter) if !info.matches(&filter) => {}
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = tx.closed() => return,
        }
    }
}
