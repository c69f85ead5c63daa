//! The body types the proxy moves: bodies stream frame by frame, except a request body small
//! enough to be kept for a retry (see `max_replay_body_bytes`).
//!
//! Enums rather than boxed trait objects, so that forwarding a request costs no allocation
//! for its body.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::balance::InFlight;
use crate::context::{L5D_SUCCESS_CLASS, has_l5d, strip_l5d};
use crate::metrics::{ClientMetrics, ServiceMetrics};
use crate::outcome;
use crate::retry::{Class, ClassifierConfig};

/// Errors of bodies the router did not make.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body on its way to an endpoint.
#[derive(Debug)]
pub(crate) enum RequestBody {
    /// No body: also what a retried request without a body carries.
    Empty,
    /// The downstream request's body, streamed as it arrives.
    Streaming(Stalling<Streamed>),
    /// A small body read whole, so that the request can be sent again.
    Buffered {
        /// The data, until it is sent.
        data: Option<Bytes>,
        /// The trailers, until they are sent.
        trailers: Option<HeaderMap>,
    },
}

/// The body of a request as the server (or a test) gave it: a connection's body as is, with
/// no allocation, and any other kind boxed.
pub(crate) enum Streamed {
    Incoming(Incoming),
    Other(UnsyncBoxBody<Bytes, BoxError>),
}

/// The client's side of a request body failed: what the router answers 400 or 408 for,
/// rather than blaming the endpoint.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestBodyError {
    /// The body is malformed (a bad chunk size, say) or the connection broke.
    #[error("reading the request body: {0}")]
    Read(#[source] BoxError),
    /// No byte of it arrived for too long.
    #[error("no part of the request body arrived for {} ms", .0.as_millis())]
    Stalled(Duration),
}

/// An endpoint's response body stopped arriving.
#[derive(Debug, thiserror::Error)]
#[error("no part of the response body arrived from the endpoint for {} ms", .0.as_millis())]
pub(crate) struct ResponseStalled(Duration);

/// A streamed body that fails once no frame has arrived for `idle`. The timer is made on the
/// first wait, so a body that arrives in one piece never has one.
#[derive(Debug)]
pub(crate) struct Stalling<B> {
    body: B,
    idle: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

/// What a stalling body's poll saw.
enum Polled<T, E> {
    Frame(Poll<Option<Result<Frame<T>, E>>>),
    Stalled(Duration),
}

/// A response body on its way back to the client.
#[derive(Debug)]
pub struct ResponseBody {
    kind: ResponseKind,
    /// Counts the response as in flight on its endpoint until the body ends or is dropped,
    /// which is what the load balancer's load estimate needs for streaming calls.
    in_flight: Option<InFlight>,
    /// A gRPC call whose status comes in the trailers: counted when they arrive.
    grpc: Option<Box<GrpcOutcome>>,
    /// Going out through an untrusted listener: trailers lose their `l5d-*` fields too.
    strip_l5d_trailers: bool,
}

/// Metrics of a gRPC call waiting for its `grpc-status` trailer.
#[derive(Debug)]
pub(crate) struct GrpcOutcome {
    classifier: Arc<ClassifierConfig>,
    client: Arc<ClientMetrics>,
    client_latency: Duration,
    service: Option<(Arc<ServiceMetrics>, Duration)>,
}

impl GrpcOutcome {
    pub(crate) fn new(classifier: Arc<ClassifierConfig>, client: Arc<ClientMetrics>, latency: Duration) -> Self {
        GrpcOutcome { classifier, client, client_latency: latency, service: None }
    }

    /// Records the call: by its trailers, or as a failure when it ended without any. For its
    /// logical name, a router further down the path has the last word (`l5d-success-class`
    /// in the trailers), and the verdict is added to the trailers for routers before this one.
    fn finish(self, trailers: Option<&mut HeaderMap>) {
        let class = match &trailers {
            Some(trailers) => self.classifier.classify_trailers(trailers),
            None => Class::Failure { retryable: false },
        };
        let verdict = trailers.as_deref().and_then(Class::from_success_class).unwrap_or(class);
        let service = self.service.as_ref().map(|(service, latency)| (&**service, verdict, *latency));
        outcome::trailers_arrived(&self.client, class, self.client_latency, service);
        if self.service.is_some()
            && let Some(trailers) = trailers
            && !trailers.contains_key(L5D_SUCCESS_CLASS)
        {
            trailers.insert(L5D_SUCCESS_CLASS, verdict.success_class_value());
        }
    }
}

#[derive(Debug)]
enum ResponseKind {
    Upstream(Stalling<Incoming>),
    Full(Option<Bytes>),
}

impl std::fmt::Debug for Streamed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Streamed::Incoming(body) => body.fmt(f),
            Streamed::Other(_) => f.write_str("Streamed::Other"),
        }
    }
}

impl Streamed {
    /// `body`, as a connection's body when it is one.
    pub(crate) fn new<B>(body: B) -> Streamed
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let mut slot = Some(body);
        if let Some(incoming) = (&mut slot as &mut dyn Any).downcast_mut::<Option<Incoming>>() {
            return Streamed::Incoming(incoming.take().expect("just put there"));
        }
        let body = slot.expect("still there");
        Streamed::Other(UnsyncBoxBody::new(http_body_util::BodyExt::map_err(body, Into::into)))
    }
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Streamed::Incoming(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Streamed::Other(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Streamed::Incoming(body) => body.is_end_stream(),
            Streamed::Other(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Streamed::Incoming(body) => body.size_hint(),
            Streamed::Other(body) => body.size_hint(),
        }
    }
}

impl<B: Body + Unpin> Stalling<B> {
    pub(crate) fn new(body: B, idle: Duration) -> Self {
        Stalling { body, idle, timer: None }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Polled<B::Data, B::Error> {
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Pending => {
                let idle = self.idle;
                let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Polled::Stalled(idle),
                    Poll::Pending => Polled::Frame(Poll::Pending),
                }
            }
            ready => {
                if let Some(timer) = &mut self.timer {
                    timer.as_mut().reset(Instant::now() + self.idle);
                }
                Polled::Frame(ready)
            }
        }
    }
}

impl RequestBody {
    /// A copy of a body read whole, for one more attempt; other bodies cannot be copied.
    pub(crate) fn replay(&self) -> RequestBody {
        match self {
            RequestBody::Buffered { data, trailers } => {
                RequestBody::Buffered { data: data.clone(), trailers: trailers.clone() }
            }
            RequestBody::Empty | RequestBody::Streaming(_) => RequestBody::Empty,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Streaming(body) => match body.poll(cx) {
                Polled::Frame(polled) => polled.map(|frame| frame.map(|r| r.map_err(RequestBodyError::Read))),
                Polled::Stalled(idle) => Poll::Ready(Some(Err(RequestBodyError::Stalled(idle)))),
            },
            RequestBody::Buffered { data, trailers } => Poll::Ready(match data.take() {
                Some(chunk) => Some(Ok(Frame::data(chunk))),
                None => trailers.take().map(|t| Ok(Frame::trailers(t))),
            }),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Streaming(body) => body.body.is_end_stream(),
            RequestBody::Buffered { data, trailers } => data.is_none() && trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Streaming(body) => body.body.size_hint(),
            RequestBody::Buffered { data, .. } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

impl ResponseBody {
    /// A body of `bytes`, made by the router itself.
    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        ResponseBody {
            kind: ResponseKind::Full((!bytes.is_empty()).then_some(bytes)),
            in_flight: None,
            grpc: None,
            strip_l5d_trailers: false,
        }
    }

    /// An empty body.
    pub(crate) fn empty() -> Self {
        ResponseBody { kind: ResponseKind::Full(None), in_flight: None, grpc: None, strip_l5d_trailers: false }
    }

    /// An endpoint's response body, holding `in_flight` until it ends, and failing when no
    /// part of it arrives for `idle`.
    pub(crate) fn upstream(body: Incoming, in_flight: InFlight, grpc: Option<GrpcOutcome>, idle: Duration) -> Self {
        let in_flight = (!body.is_end_stream()).then_some(in_flight);
        ResponseBody {
            kind: ResponseKind::Upstream(Stalling::new(body, idle)),
            in_flight,
            grpc: grpc.map(Box::new),
            strip_l5d_trailers: false,
        }
    }

    /// True when the call's outcome is only known from its trailers.
    pub(crate) fn awaits_trailers(&self) -> bool {
        self.grpc.is_some()
    }

    /// Removes every `l5d-*` trailer on the way out (for an untrusted listener).
    pub(crate) fn strip_l5d_trailers(&mut self) {
        self.strip_l5d_trailers = true;
    }

    /// Counts the call for its logical name too, once its trailers arrive.
    pub(crate) fn record_service_on_trailers(&mut self, service: Arc<ServiceMetrics>, latency: Duration) {
        if let Some(grpc) = &mut self.grpc {
            grpc.service = Some((service, latency));
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // A call abandoned before its trailers did not succeed.
        if let Some(grpc) = self.grpc.take() {
            grpc.finish(None);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match &mut this.kind {
            ResponseKind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ResponseKind::Upstream(body) => {
                let mut polled = match body.poll(cx) {
                    Polled::Frame(polled) => polled.map(|frame| frame.map(|r| r.map_err(Self::Error::from))),
                    Polled::Stalled(idle) => Poll::Ready(Some(Err(ResponseStalled(idle).into()))),
                };
                match &mut polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(trailers) = frame.trailers_mut() {
                            if let Some(grpc) = this.grpc.take() {
                                grpc.finish(Some(trailers));
                            }
                            if this.strip_l5d_trailers && has_l5d(trailers) {
                                strip_l5d(trailers);
                            }
                        }
                    }
                    Poll::Ready(None | Some(Err(_))) => {
                        this.in_flight = None;
                        if let Some(grpc) = this.grpc.take() {
                            grpc.finish(None);
                        }
                    }
                    Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            ResponseKind::Full(bytes) => bytes.is_none(),
            ResponseKind::Upstream(body) => body.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            ResponseKind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            ResponseKind::Upstream(body) => body.body.size_hint(),
        }
    }
}
