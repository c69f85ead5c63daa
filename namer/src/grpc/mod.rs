//! Linkerd 1's `io.l5d.mesh` gRPC API: the Interpreter, Resolver, Delegator and Codec
//! services, as namerd serves them. Our own router speaks the same API.
//!
//! Streams send the current state first, then each change. They are fed from watches, which
//! hold only the latest state: a slow reader skips intermediate states and always gets the
//! newest one.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt, future};
use tokio_stream::wrappers::WatchStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use waymark_dtab::{Addr, Alternatives, DelegateError, Dtab, NameTree, Path};
use waymark_interpreter::{BindState, Interpreter};
use waymark_proto::convert::VersionedDtab;
use waymark_proto::mesh::{self, codec_server, delegator_server, interpreter_server, resolver_server};
use waymark_proto::request::{self, BindRequest, DelegateTreeRequest};
use waymark_store::{DtabStore, Namespace, StoreError};

use crate::metrics::{ApiMetrics, OpenStream};

mod linkerd_compat;

pub use linkerd_compat::LinkerdCompat;

/// The state every mesh service shares.
#[derive(Clone)]
pub struct Mesh {
    interpreter: Interpreter,
    store: Arc<dyn DtabStore>,
    shutdown: CancellationToken,
    metrics: ApiMetrics,
    request_timeout: Duration,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh").field("interpreter", &self.interpreter).finish_non_exhaustive()
    }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl Mesh {
    /// The services over `interpreter` and `store`. Streams end when `shutdown` is cancelled.
    pub fn new(
        interpreter: Interpreter,
        store: Arc<dyn DtabStore>,
        shutdown: CancellationToken,
        metrics: ApiMetrics,
        request_timeout: Duration,
    ) -> Self {
        Mesh { interpreter, store, shutdown, metrics, request_timeout }
    }

    /// All four services, ready to be added to a tonic server.
    pub fn routes(self) -> tonic::service::Routes {
        tonic::service::Routes::new(interpreter_server::InterpreterServer::new(self.clone()))
            .add_service(resolver_server::ResolverServer::new(self.clone()))
            .add_service(delegator_server::DelegatorServer::new(self.clone()))
            .add_service(codec_server::CodecServer::new(self))
    }

    /// Records the outcome of a call and passes it on.
    fn record<T>(&self, method: &'static str, result: Result<T, Status>) -> Result<T, Status> {
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        };
        self.metrics.grpc_request(method, code);
        result
    }

    /// Turns a stream of items into a response stream that ends after the first error, on
    /// shutdown, and counts itself as an open stream while it lasts.
    fn stream<T: Send + 'static>(
        &self,
        method: &'static str,
        items: impl Stream<Item = Result<T, Status>> + Send + 'static,
    ) -> ResponseStream<T> {
        let open = OpenStream::new(&self.metrics, "grpc", method);
        let stream = items
            .scan(false, |ended, item| {
                if *ended {
                    return future::ready(None);
                }
                *ended = item.is_err();
                future::ready(Some(item))
            })
            .take_until(self.shutdown.clone().cancelled_owned())
            .map(move |item| {
                let _open = &open;
                item
            });
        Box::pin(stream)
    }

    /// Waits, up to the request timeout, for a watch to hold a value `ready` accepts.
    async fn first_ready<T: Clone>(
        &self,
        rx: &mut tokio::sync::watch::Receiver<T>,
        ready: impl Fn(&T) -> bool,
    ) -> Result<T, Status> {
        match tokio::time::timeout(self.request_timeout, rx.wait_for(|v| ready(v))).await {
            Ok(Ok(value)) => Ok(value.clone()),
            Ok(Err(_)) => Err(Status::unavailable("the namer is shutting down")),
            Err(_) => Err(Status::deadline_exceeded("no answer within the request timeout")),
        }
    }
}

/// How the client asked alternatives to bind (see [`request::ALTERNATIVES_METADATA`]).
fn alternatives<T>(request: &Request<T>) -> Alternatives {
    match request.metadata().get(request::ALTERNATIVES_METADATA).and_then(|v| v.to_str().ok()) {
        Some(request::KEEP_ALTERNATIVES) => Alternatives::Keep,
        _ => Alternatives::First,
    }
}

fn bound_tree(state: &BindState) -> Option<Result<mesh::BoundTreeRsp, Status>> {
    match state {
        BindState::Pending => None,
        BindState::Bound(tree) => Some(Ok(mesh::BoundTreeRsp::from(tree.as_ref()))),
        BindState::Failed(e) => Some(Err(Status::internal(e.to_string()))),
    }
}

fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::NotFound(_) => request::root_not_found(),
        StoreError::Unavailable(cause) => Status::unavailable(cause),
        StoreError::LimitReached(cause) => Status::resource_exhausted(cause),
        other => Status::internal(other.to_string()),
    }
}

fn namespace_of(root: Option<&mesh::Path>) -> Result<Namespace, Status> {
    // A root that is not a valid namespace name cannot exist.
    request::namespace(root)?.parse::<Namespace>().map_err(|_| request::root_not_found())
}

#[tonic::async_trait]
impl interpreter_server::Interpreter for Mesh {
    async fn get_bound_tree(&self, request: Request<mesh::BindReq>) -> Result<Response<mesh::BoundTreeRsp>, Status> {
        let result = async {
            let req = BindRequest::try_from(request.get_ref())?;
            let mut rx =
                self.interpreter.bind_with_alternatives(&req.namespace, &req.name, &req.dtab, alternatives(&request));
            let state = self.first_ready(&mut rx, |s| *s != BindState::Pending).await?;
            bound_tree(&state).unwrap_or_else(|| Err(Status::internal("pending"))).map(Response::new)
        }
        .await;
        self.record("GetBoundTree", result)
    }

    type StreamBoundTreeStream = ResponseStream<mesh::BoundTreeRsp>;

    async fn stream_bound_tree(
        &self,
        request: Request<mesh::BindReq>,
    ) -> Result<Response<Self::StreamBoundTreeStream>, Status> {
        let result = BindRequest::try_from(request.get_ref()).map(|req| {
            let rx =
                self.interpreter.bind_with_alternatives(&req.namespace, &req.name, &req.dtab, alternatives(&request));
            let items = WatchStream::new(rx).filter_map(|state| future::ready(bound_tree(&state)));
            Response::new(self.stream("StreamBoundTree", items))
        });
        self.record("StreamBoundTree", result)
    }
}

#[tonic::async_trait]
impl resolver_server::Resolver for Mesh {
    async fn get_replicas(&self, request: Request<mesh::ReplicasReq>) -> Result<Response<mesh::Replicas>, Status> {
        let result = async {
            let id = match request::replicas_id(request.get_ref()) {
                Ok(id) => id,
                Err(answer) => return Ok(Response::new(answer)),
            };
            let mut rx = self.interpreter.resolve(&id);
            // The current value, once it is known; a name that stays pending answers pending.
            let addr = match self.first_ready(&mut rx, |a| !a.is_pending()).await {
                Ok(addr) => addr,
                Err(_) => Addr::Pending,
            };
            Ok(Response::new(mesh::Replicas::from(&addr)))
        }
        .await;
        self.record("GetReplicas", result)
    }

    type StreamReplicasStream = ResponseStream<mesh::Replicas>;

    async fn stream_replicas(
        &self,
        request: Request<mesh::ReplicasReq>,
    ) -> Result<Response<Self::StreamReplicasStream>, Status> {
        let items: Pin<Box<dyn Stream<Item = Result<mesh::Replicas, Status>> + Send>> =
            match request::replicas_id(request.get_ref()) {
                Ok(id) => Box::pin(
                    WatchStream::new(self.interpreter.resolve(&id)).map(|addr| Ok(mesh::Replicas::from(&addr))),
                ),
                Err(answer) => Box::pin(futures::stream::iter([Ok(answer)]).chain(futures::stream::pending())),
            };
        self.record("StreamReplicas", Ok(Response::new(self.stream("StreamReplicas", items))))
    }
}

#[tonic::async_trait]
impl delegator_server::Delegator for Mesh {
    async fn get_dtab(&self, request: Request<mesh::DtabReq>) -> Result<Response<mesh::DtabRsp>, Status> {
        let result = async {
            let ns = namespace_of(request.get_ref().root.as_ref())?;
            let current = self.store.get(&ns).await.map_err(store_status)?;
            let versioned = VersionedDtab { version: current.version.as_bytes().to_vec(), dtab: current.dtab };
            Ok(Response::new(mesh::DtabRsp::from(&versioned)))
        }
        .await;
        self.record("GetDtab", result)
    }

    type StreamDtabStream = ResponseStream<mesh::DtabRsp>;

    async fn stream_dtab(&self, request: Request<mesh::DtabReq>) -> Result<Response<Self::StreamDtabStream>, Status> {
        let result = namespace_of(request.get_ref().root.as_ref()).map(|ns| {
            let items = WatchStream::new(self.store.watch(&ns)).map(|current| match current {
                Some(v) => {
                    let versioned = VersionedDtab { version: v.version.as_bytes().to_vec(), dtab: v.dtab };
                    Ok(mesh::DtabRsp::from(&versioned))
                }
                // Missing, or deleted while watched: the stream ends, as namerd's does.
                None => Err(request::root_not_found()),
            });
            Response::new(self.stream("StreamDtab", items))
        });
        self.record("StreamDtab", result)
    }

    async fn get_delegate_tree(
        &self,
        request: Request<mesh::DelegateTreeReq>,
    ) -> Result<Response<mesh::DelegateTreeRsp>, Status> {
        let result = self.delegate(request.get_ref()).await.map(Response::new);
        self.record("GetDelegateTree", result)
    }

    type StreamDelegateTreeStream = ResponseStream<mesh::DelegateTreeRsp>;

    async fn stream_delegate_tree(
        &self,
        request: Request<mesh::DelegateTreeReq>,
    ) -> Result<Response<Self::StreamDelegateTreeStream>, Status> {
        // Deprecated in the API: one message, then the stream ends.
        let result = self.delegate(request.get_ref()).await.map(|tree| {
            let stream: ResponseStream<mesh::DelegateTreeRsp> = Box::pin(futures::stream::iter([Ok(tree)]));
            Response::new(stream)
        });
        self.record("StreamDelegateTree", result)
    }
}

impl Mesh {
    /// Delegates off the runtime's threads, within the delegation limits and the request
    /// timeout: a limit reached is `RESOURCE_EXHAUSTED`, the timeout `DEADLINE_EXCEEDED`.
    async fn delegate(&self, req: &mesh::DelegateTreeReq) -> Result<mesh::DelegateTreeRsp, Status> {
        let req = DelegateTreeRequest::try_from(req)?;
        let NameTree::Leaf(path) = &req.tree else {
            return Err(Status::invalid_argument("only a single path can be delegated"));
        };
        let tree = self.interpreter.delegate(&req.namespace, path, &req.dtab, self.request_timeout).await.map_err(
            |e| match e {
                DelegateError::Cancelled => Status::deadline_exceeded(e.to_string()),
                DelegateError::MaxDepth => Status::internal(e.to_string()),
                e => Status::resource_exhausted(e.to_string()),
            },
        )?;
        Ok(mesh::DelegateTreeRsp::from(&tree))
    }
}

#[tonic::async_trait]
impl codec_server::Codec for Mesh {
    async fn read_dtab(&self, request: Request<mesh::ReadDtabReq>) -> Result<Response<mesh::ReadDtabRsp>, Status> {
        let result = request
            .get_ref()
            .text
            .parse::<Dtab>()
            .map(|dtab| Response::new(mesh::ReadDtabRsp { dtab: Some(mesh::Dtab::from(&dtab)) }))
            .map_err(|e| Status::invalid_argument(e.to_string()));
        self.record("ReadDtab", result)
    }

    async fn show_dtab(&self, request: Request<mesh::ShowDtabReq>) -> Result<Response<mesh::ShowDtabRsp>, Status> {
        let result = match &request.get_ref().dtab {
            None => Ok(Dtab::empty()),
            Some(dtab) => Dtab::try_from(dtab).map_err(Status::from),
        }
        .map(|dtab| Response::new(mesh::ShowDtabRsp { text: dtab.to_string() }));
        self.record("ShowDtab", result)
    }

    async fn read_path(&self, request: Request<mesh::ReadPathReq>) -> Result<Response<mesh::ReadPathRsp>, Status> {
        let text = &request.get_ref().text;
        let parsed = if text.is_empty() { Ok(Path::empty()) } else { text.parse::<Path>() };
        let result = parsed
            .map(|path| Response::new(mesh::ReadPathRsp { path: Some(mesh::Path::from(&path)) }))
            .map_err(|e| Status::invalid_argument(e.to_string()));
        self.record("ReadPath", result)
    }

    async fn show_path(&self, request: Request<mesh::ShowPathReq>) -> Result<Response<mesh::ShowPathRsp>, Status> {
        let result = match &request.get_ref().path {
            None => Ok(Path::empty()),
            Some(path) => Path::try_from(path).map_err(Status::from),
        }
        .map(|path| Response::new(mesh::ShowPathRsp { text: path.to_string() }));
        self.record("ShowPath", result)
    }
}
