//! The body types the proxy moves: bodies stream frame by frame and are never collected.
//!
//! Enums rather than boxed trait objects, so that forwarding a request costs no allocation
//! for its body.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::balance::InFlight;

/// A request body on its way to an endpoint.
#[derive(Debug)]
pub(crate) enum RequestBody {
    /// No body: also what a retried request without a body carries.
    Empty,
    /// The downstream request's body, streamed as it arrives.
    Streaming(Incoming),
}

/// A response body on its way back to the client.
#[derive(Debug)]
pub struct ResponseBody {
    kind: ResponseKind,
    /// Counts the response as in flight on its endpoint until the body ends or is dropped,
    /// which is what the load balancer's load estimate needs for streaming calls.
    in_flight: Option<InFlight>,
}

#[derive(Debug)]
enum ResponseKind {
    Upstream(Incoming),
    Full(Option<Bytes>),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Streaming(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Streaming(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Streaming(body) => body.size_hint(),
        }
    }
}

impl ResponseBody {
    /// A body of `bytes`, made by the router itself.
    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        ResponseBody { kind: ResponseKind::Full((!bytes.is_empty()).then_some(bytes)), in_flight: None }
    }

    /// An empty body.
    pub(crate) fn empty() -> Self {
        ResponseBody { kind: ResponseKind::Full(None), in_flight: None }
    }

    /// An endpoint's response body, holding `in_flight` until it ends.
    pub(crate) fn upstream(body: Incoming, in_flight: InFlight) -> Self {
        let in_flight = (!body.is_end_stream()).then_some(in_flight);
        ResponseBody { kind: ResponseKind::Upstream(body), in_flight }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        match &mut this.kind {
            ResponseKind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ResponseKind::Upstream(body) => {
                let polled = Pin::new(body).poll_frame(cx);
                if let Poll::Ready(None | Some(Err(_))) = &polled {
                    this.in_flight = None;
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            ResponseKind::Full(bytes) => bytes.is_none(),
            ResponseKind::Upstream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            ResponseKind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            ResponseKind::Upstream(body) => body.size_hint(),
        }
    }
}
