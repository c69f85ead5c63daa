//! Streaming responses (`watch=true`) and the combined watch of a bound tree and the
//! addresses of its leaves.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use futures::{Stream, StreamExt, future};
use tokio::sync::watch;
use waymark_dtab::json::BoundTreeJson;
use waymark_dtab::{Addr, BoundLeaf, NameTree, Path};
use waymark_interpreter::{BindState, Interpreter};

use super::HttpApi;
use crate::metrics::OpenStream;

/// A chunked response carrying one document per line: the current state first, then each
/// change. Consecutive identical documents are sent once. The stream ends on shutdown.
pub(crate) fn stream_response(
    api: &HttpApi,
    name: &'static str,
    content_type: Option<&'static str>,
    documents: impl Stream<Item = String> + Send + 'static,
) -> Response {
    let open = OpenStream::new(&api.metrics, "http", name);
    let body = documents
        .scan(None::<String>, |last, doc| {
            let repeat = last.as_deref() == Some(doc.as_str());
            *last = Some(doc.clone());
            future::ready(Some((!repeat).then_some(doc)))
        })
        .filter_map(future::ready)
        .take_until(api.shutdown.clone().cancelled_owned())
        .map(move |doc| {
            let _open = &open;
            Ok::<_, Infallible>(Bytes::from(format!("{doc}\n")))
        });
    let mut response = Response::new(Body::from_stream(body));
    if let Some(ct) = content_type {
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    response
}

/// A bound tree and the address sets of its leaves, watched together.
pub(crate) struct TreeWatch {
    interpreter: Interpreter,
    bind: watch::Receiver<BindState>,
    addrs: HashMap<Path, watch::Receiver<Addr>>,
}

/// The state of a [`TreeWatch`].
pub(crate) enum TreeState {
    /// The binding is not known yet.
    Pending,
    /// Binding failed.
    Failed(String),
    /// The tree, and whether every leaf's addresses are known.
    Bound { tree: Arc<NameTree<BoundLeaf>>, complete: bool },
}

impl TreeWatch {
    pub(crate) fn new(interpreter: Interpreter, bind: watch::Receiver<BindState>) -> Self {
        TreeWatch { interpreter, bind, addrs: HashMap::new() }
    }

    /// The current state; subscribes to the addresses of the current leaves.
    pub(crate) fn current(&mut self) -> TreeState {
        let state = self.bind.borrow_and_update().clone();
        match state {
            BindState::Pending => TreeState::Pending,
            BindState::Failed(e) => TreeState::Failed(e.to_string()),
            BindState::Bound(tree) => {
                let ids: Vec<Path> = tree.leaves().iter().map(|l| l.name.id().clone()).collect();
                self.addrs.retain(|id, _| ids.contains(id));
                for id in ids {
                    let interpreter = &self.interpreter;
                    self.addrs.entry(id.clone()).or_insert_with(|| interpreter.resolve(&id));
                }
                for rx in self.addrs.values_mut() {
                    rx.mark_unchanged();
                }
                let complete = self.addrs.values().all(|rx| !rx.borrow().is_pending());
                TreeState::Bound { tree, complete }
            }
        }
    }

    /// The tree as namerd's JSON, with each leaf's current addresses.
    pub(crate) fn json(&self, tree: &NameTree<BoundLeaf>) -> BoundTreeJson {
        BoundTreeJson::from_tree(tree, &mut |name| self.addrs.get(name.id()).map(|rx| rx.borrow().clone()))
    }

    /// The current address set of `id`, if it is a leaf of the current tree.
    pub(crate) fn addr(&self, id: &Path) -> Option<Addr> {
        self.addrs.get(id).map(|rx| rx.borrow().clone())
    }

    /// Waits for the binding or any leaf's addresses to change. Returns false when the
    /// binding will never change again.
    pub(crate) async fn changed(&mut self) -> bool {
        let TreeWatch { bind, addrs, .. } = self;
        let any_addr = async move {
            if addrs.is_empty() {
                return future::pending().await;
            }
            // A closed address watch cannot happen while its interpreter keeps the sender.
            let _ = future::select_all(addrs.values_mut().map(|rx| Box::pin(rx.changed()))).await;
        };
        tokio::select! {
            changed = bind.changed() => changed.is_ok(),
            () = any_addr => true,
        }
    }
}
