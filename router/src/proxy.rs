//! The request pipeline: identify, bind, balance, client, with timeouts and retries around
//! the last three.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;

use futures::future::Either;
use std::sync::Arc;
use std::time::Duration;

use http::header::{CONNECTION, CONTENT_TYPE, HOST, TE, TRANSFER_ENCODING, UPGRADE};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::watch;
use tokio::time::Instant;
use waymark_dtab::{Dtab, Path};

use crate::balance::Endpoint;
use crate::body::{GrpcOutcome, RequestBody, ResponseBody, Stalling};
use crate::caller::{
    Caller, Deadline, L5D_CTX_DEADLINE, L5D_CTX_TRACE, TraceId, append_via, call_depth, wall_clock_ns,
};
use crate::client::UpstreamProtocol;
use crate::conn::ConnectionInfo;
use crate::context::{
    L5D_CTX_DTAB, L5D_DST_CLIENT, L5D_DST_RESIDUAL, L5D_DST_SERVICE, L5D_REQID, L5D_RETRYABLE, L5D_SUCCESS_CLASS,
    has_l5d, strip_l5d, take_override,
};
use crate::errors::{Explanation, RouterError, chain, respond};
use crate::identify::{Identified, Identifier, identify};
use crate::metrics::RefusedLabels;
use crate::naming::Naming;
use crate::retry::{Class, ClassifierConfig, Deadlines, is_idempotent};
use crate::routes::{Choice, Concrete, Endpoints, OverridesBusy, Route, RouteKey, RouteState, Routes};

/// Settings of the pipeline, from configuration.
#[derive(Debug, Clone)]
pub(crate) struct ProxySettings {
    pub(crate) protocol: UpstreamProtocol,
    pub(crate) binding_timeout: Duration,
    pub(crate) total_timeout: Option<Duration>,
    pub(crate) attempt_timeout: Option<Duration>,
    pub(crate) classifier: Arc<ClassifierConfig>,
    pub(crate) max_override_bytes: usize,
    pub(crate) max_retries: u32,
    pub(crate) max_replay_body_bytes: u64,
    /// Whether the caller's deadline bounds this hop too.
    pub(crate) enforce_deadline: bool,
    /// How long an endpoint's response body may go without a byte arriving.
    pub(crate) response_body_idle_timeout: Duration,
}

/// What every listener shares: the bindings, naming and settings.
#[derive(Debug)]
pub(crate) struct Proxy {
    pub(crate) routes: Arc<Routes>,
    pub(crate) naming: Naming,
    pub(crate) settings: ProxySettings,
}

/// One listener's view of the proxy: its identifiers and whether it trusts its clients.
#[derive(Debug)]
pub(crate) struct ListenerProxy {
    pub(crate) proxy: Arc<Proxy>,
    pub(crate) identifiers: Vec<Identifier>,
    pub(crate) trusted: bool,
    /// Requests that have passed more proxies than this are refused (a routing loop).
    pub(crate) max_call_depth: usize,
    /// The listener's name, for metrics.
    pub(crate) name: String,
    /// How long a request body may go without a byte arriving.
    pub(crate) request_body_idle_timeout: Duration,
    /// Requests refused before routing, by reason.
    pub(crate) refused: Family<RefusedLabels, Counter>,
    pub(crate) empty_dtab: Dtab,
    /// The address this listener is bound to: a destination there is a loop.
    pub(crate) bound: SocketAddr,
}

/// A chosen destination for one attempt.
struct Destination {
    concrete: Arc<Concrete>,
    residual: Option<HeaderValue>,
    endpoint: Arc<Endpoint>,
}

/// Finagle's own per-request dtab header: forwarded as is (as Linkerd 1 does), except from
/// an edge, where it is stripped like the `l5d-*` headers.
const DTAB_LOCAL: HeaderName = HeaderName::from_static("dtab-local");

/// The settings of an `h2c` upgrade (RFC 7540, 3.2.1), never forwarded.
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Headers that describe one connection and are never forwarded (RFC 9110, 7.6.1).
const HOP_BY_HOP: [HeaderName; 5] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    TRANSFER_ENCODING,
    UPGRADE,
];

impl ListenerProxy {
    /// Serves one request. Never fails: errors become responses here.
    ///
    /// Everything up to the first wait (identify, the dtab context, bind) runs here, before
    /// the returned future exists, so that the future only holds what the waiting part needs:
    /// hyper keeps one per request in flight.
    pub(crate) fn serve(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> impl Future<Output = Result<Response<ResponseBody>, Infallible>> + Send + 'static {
        let started = Instant::now();
        let mut why = Explanation::default();
        let mut outbound = match self.route(req, started, &mut why) {
            Ok(outbound) => outbound,
            Err(failed) => {
                let (error, name) = *failed;
                let labels = RefusedLabels { listener: self.name.clone(), reason: error.refusal() };
                self.refused.get_or_create(&labels).inc();
                let name = name.as_ref().map(|n| (n, &self.empty_dtab));
                let failure = Some(Class::Failure { retryable: false });
                return Either::Left(std::future::ready(Ok(self.finish(Err(error), &why, name, failure))));
            }
        };
        Either::Right(async move {
            // balance + client, with retries and timeouts.
            let mut result = self.proxy.forward(&mut outbound, started, &mut why, &self).await;
            let class = self.proxy.record(&outbound.route, &mut result, started.elapsed(), why.grpc);
            let key = &outbound.route.key;
            Ok(self.finish(result, &why, Some((&key.name, &key.local)), class))
        })
    }

    /// The response: errors become responses here, a trusted listener says how the request
    /// was classified (`l5d-success-class`, unless its trailers will), and an edge shows no
    /// `l5d-*` header or trailer.
    fn finish(
        &self,
        result: Result<Response<ResponseBody>, RouterError>,
        why: &Explanation,
        name: Option<(&Path, &Dtab)>,
        class: Option<Class>,
    ) -> Response<ResponseBody> {
        let mut response = match result {
            Ok(response) => response,
            Err(error) => respond(&error, why, name, &self.proxy.naming.base_dtab(), self.trusted),
        };
        if self.trusted {
            if let Some(class) = class
                && !response.headers().contains_key(L5D_SUCCESS_CLASS)
            {
                response.headers_mut().insert(L5D_SUCCESS_CLASS, class.success_class_value());
            }
        } else {
            if has_l5d(response.headers()) {
                strip_l5d(response.headers_mut());
            }
            response.body_mut().strip_l5d_trailers();
        }
        response
    }

    /// True when `addr` is this listener: the address it is bound to, or (bound to all
    /// addresses) a loopback address and its port, or the address the request's connection
    /// was accepted on. Sending a request there would only bring it back here.
    fn is_itself(&self, addr: SocketAddr, parts: &http::request::Parts) -> bool {
        let bound = self.bound;
        addr == bound
            || (bound.ip().is_unspecified()
                && addr.port() == bound.port()
                && (addr.ip().is_loopback() || addr.ip().is_unspecified()))
            || parts.extensions.get::<Arc<ConnectionInfo>>().is_some_and(|conn| conn.local() == addr)
    }

    /// The pipeline up to the binding: identify, dtab context, bind.
    /// A failure names the logical name when identification got that far.
    fn route(
        &self,
        mut req: Request<Incoming>,
        started: Instant,
        why: &mut Explanation,
    ) -> Result<Outbound, Box<(RouterError, Option<Path>)>> {
        why.grpc = is_grpc(req.headers());
        // An edge strips every l5d-* header: clients outside the mesh may not steer routing;
        // nor through Finagle's own override header, which services behind may still honour.
        if !self.trusted {
            if has_l5d(req.headers()) {
                strip_l5d(req.headers_mut());
            }
            req.headers_mut().remove(DTAB_LOCAL);
        }
        check_target(&mut req).map_err(|e| Box::new((e, None)))?;
        // A request that has passed this many proxies is going round in circles.
        let depth = call_depth(req.headers());
        if depth > self.max_call_depth {
            return Err(Box::new((RouterError::CallDepth { depth, max: self.max_call_depth }, None)));
        }

        // identify: the request's logical name, such as /svc/web.
        let name = match identify(&self.identifiers, &req) {
            Identified::Name(name, rewritten) => {
                if let Some(uri) = rewritten {
                    *req.uri_mut() = uri;
                }
                name
            }
            Identified::Unidentified(reason) => return Err(Box::new((RouterError::Unidentified(reason), None))),
        };

        // dtab context: l5d-ctx-dtab ++ l5d-dtab, appended to the namespace's dtab; and the
        // caller's deadline and trace. Most requests carry no l5d-* header at all (they come
        // straight from an application), and one look at the names says so.
        let (local, caller) = if self.trusted && has_l5d(req.headers()) {
            match take_override(req.headers_mut(), self.proxy.settings.max_override_bytes) {
                Ok(local) => (local, Caller::take(req.headers_mut())),
                Err(e) => return Err(Box::new((e.into(), Some(name)))),
            }
        } else {
            (Dtab::empty(), Caller::default())
        };

        // bind: the (name, override) binding, shared by every request that needs it.
        let route = match self.proxy.routes.get(RouteKey { name, local }) {
            Ok(route) => route,
            Err(OverridesBusy { name, count, bytes }) => {
                return Err(Box::new((RouterError::OverridesBusy { count, bytes }, Some(name))));
            }
        };
        route.metrics.requests.inc();
        route.budget.deposit();
        Ok(self.proxy.outbound(route, req, why.grpc, caller, started, self.request_body_idle_timeout))
    }
}

/// A request on its way to an endpoint: its binding and the parts every attempt sends.
struct Outbound {
    route: Arc<Route>,
    parts: http::request::Parts,
    /// The streamed body, until an attempt takes it; `None` for a request without one.
    body: Option<RequestBody>,
    on_upgrade: Option<hyper::upgrade::OnUpgrade>,
    grpc: bool,
    http2: bool,
    /// No body: the request can be sent again.
    replayable: bool,
    /// The caller's deadline, when this hop enforces it.
    caller_deadline: Option<Instant>,
}

/// How a response counts: a gRPC call by its `grpc-status` when the headers carry one (a
/// trailers-only answer), anything else by the configured classifier.
fn classify(
    classifier: &ClassifierConfig,
    method: &Method,
    grpc: bool,
    status: StatusCode,
    headers: &HeaderMap,
) -> Class {
    if grpc && status == StatusCode::OK && crate::retry::grpc_status(headers).is_some() {
        return classifier.classify_trailers(headers);
    }
    classifier.classify(method, status, headers)
}

/// Makes sure the request names one destination, the same way to every reader: a router
/// that routes by one name and forwards another can be steered past the rules of the hops
/// behind it.
fn check_target<B>(req: &mut Request<B>) -> Result<(), RouterError> {
    if req.method() == Method::CONNECT {
        return Err(RouterError::Tunnel);
    }
    let mut hosts = req.headers().get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        // RFC 9112, 3.2: a request with more than one Host header is answered 400.
        return Err(RouterError::Malformed("the request has more than one Host header"));
    }
    if let Some(authority) = req.uri().authority() {
        if req.version() == Version::HTTP_2 {
            // RFC 9113, 8.3.1: a Host that names another server than :authority is malformed.
            if host.is_some_and(|host| !host.as_bytes().eq_ignore_ascii_case(authority.as_str().as_bytes())) {
                return Err(RouterError::Malformed("the Host header and :authority name different servers"));
            }
        } else {
            // RFC 9112, 3.2.2: a request in absolute form is for the server its target names,
            // whatever its Host header says; the next hop must see that name too.
            let value = HeaderValue::from_str(authority.as_str())
                .map_err(|_| RouterError::Malformed("the request target's authority is not a valid Host"))?;
            req.headers_mut().insert(HOST, value);
        }
    }
    Ok(())
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// True for an HTTP/1.1 request asking to switch protocols (a WebSocket, say). An upgrade to
/// `h2c` is not one: it would turn the connection to the endpoint into HTTP/2 behind this
/// router's back (request smuggling past an edge), so that token is dropped from the request,
/// and with it `HTTP2-Settings`.
fn is_upgrade<B>(req: &mut Request<B>) -> bool {
    let headers = req.headers_mut();
    headers.remove(HTTP2_SETTINGS);
    if !headers.contains_key(UPGRADE) {
        return false;
    }
    let tokens: Vec<String> = headers
        .get_all(UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    if tokens.iter().any(|t| t.eq_ignore_ascii_case("h2c")) {
        let kept: Vec<&str> = tokens.iter().filter(|t| !t.eq_ignore_ascii_case("h2c")).map(String::as_str).collect();
        headers.remove(UPGRADE);
        if let Ok(value) = HeaderValue::from_str(&kept.join(", "))
            && !kept.is_empty()
        {
            headers.insert(UPGRADE, value);
        }
    }
    req.version() == Version::HTTP_11
        && req.headers().contains_key(UPGRADE)
        && req
            .headers()
            .get_all(CONNECTION)
            .iter()
            .any(|v| v.to_str().is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))))
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            if !(keep_upgrade && name == UPGRADE) {
                headers.remove(name);
            }
        }
    }
    for name in &HOP_BY_HOP {
        if keep_upgrade && (*name == UPGRADE || *name == CONNECTION) {
            continue;
        }
        headers.remove(name);
    }
    if headers.get(TE).is_some_and(|v| v.as_bytes() != b"trailers") {
        headers.remove(TE);
    }
}

/// The absolute URI a client needs: the request's own authority (so the destination sees
/// the name it was called by), its path and query.
fn upstream_uri(parts: &http::request::Parts, fallback: &Endpoint) -> Uri {
    let authority = parts
        .uri
        .authority()
        .cloned()
        .or_else(|| parts.headers.get(HOST).and_then(|h| Authority::try_from(h.as_bytes()).ok()))
        .or_else(|| Authority::try_from(fallback.addr.to_string()).ok());
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = authority;
    uri.path_and_query = Some(parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/")));
    Uri::from_parts(uri).unwrap_or_else(|_| Uri::from_static("http://invalid/"))
}

/// What one look at a route's binding found.
enum Look {
    Ready(Destination),
    Failed(RouterError),
    /// Something is pending; with the address set to watch when it is one.
    Wait(Option<watch::Receiver<Arc<Endpoints>>>),
}

/// Chooses a destination in the binding `state` of `route`, without waiting.
fn look(route: &Route, state: Arc<RouteState>, why: &mut Explanation) -> Look {
    let name = &route.key.name;
    let look = match &*state {
        RouteState::Pending => Look::Wait(None),
        RouteState::Failed(cause) => Look::Failed(RouterError::BindFailed { name: name.clone(), why: cause.clone() }),
        RouteState::Bound { tree, .. } => match tree.choose() {
            Choice::Endpoint { leaf, endpoint } => {
                Look::Ready(Destination { concrete: leaf.concrete.clone(), residual: leaf.residual.clone(), endpoint })
            }
            Choice::Pending(concrete) => {
                let mut rx = concrete.endpoints.clone();
                rx.borrow_and_update();
                Look::Wait(Some(rx))
            }
            Choice::Neg => Look::Failed(RouterError::Neg { name: name.clone() }),
            Choice::Fail => Look::Failed(RouterError::Fail { name: name.clone() }),
            Choice::NoEndpoints(detail) => Look::Failed(RouterError::NoEndpoints { name: name.clone(), detail }),
        },
    };
    why.state = Some(state);
    look
}

/// Waits for a watch to change; a watch whose sender is gone never changes again.
async fn changed<T>(rx: &mut watch::Receiver<T>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

impl Proxy {
    /// Balance: an endpoint from the route's bound tree, waiting (up to the binding timeout)
    /// while the binding or an address set it needs is still pending.
    async fn choose(
        &self,
        route: &Route,
        binding_deadline: Instant,
        why: &mut Explanation,
    ) -> Result<Destination, RouterError> {
        // The fast path never waits; the waiting path is boxed so that its state does not
        // weigh on every request's future.
        let state = route.state.borrow().clone();
        match look(route, state, why) {
            Look::Ready(destination) => Ok(destination),
            Look::Failed(error) => Err(error),
            Look::Wait(_) => Box::pin(self.wait_and_choose(route, binding_deadline, why)).await,
        }
    }

    async fn wait_and_choose(
        &self,
        route: &Route,
        binding_deadline: Instant,
        why: &mut Explanation,
    ) -> Result<Destination, RouterError> {
        // A receiver of our own, to wait on.
        let mut route_rx = route.state.clone();
        loop {
            let state = route_rx.borrow_and_update().clone();
            let mut endpoints_rx = match look(route, state, why) {
                Look::Ready(destination) => return Ok(destination),
                Look::Failed(error) => return Err(error),
                Look::Wait(endpoints_rx) => endpoints_rx,
            };
            let wait = async {
                match &mut endpoints_rx {
                    Some(erx) => tokio::select! {
                        _ = changed(erx) => {}
                        _ = changed(&mut route_rx) => {}
                    },
                    None => changed(&mut route_rx).await,
                }
            };
            if tokio::time::timeout_at(binding_deadline, wait).await.is_err() {
                let timeout_ms = self.settings.binding_timeout.as_millis() as u64;
                return Err(RouterError::BindingTimeout { name: route.key.name.clone(), timeout_ms });
            }
        }
    }

    /// The request as every attempt sends it: hop-by-hop headers gone, the context for the
    /// next hop added, the upstream protocol chosen.
    fn outbound(
        &self,
        route: Arc<Route>,
        req: Request<Incoming>,
        grpc: bool,
        caller: Caller,
        started: Instant,
        request_body_idle: Duration,
    ) -> Outbound {
        let mut req = req;
        let upgrade = is_upgrade(&mut req);
        let (mut parts, body) = req.into_parts();
        let on_upgrade = if upgrade { parts.extensions.remove::<hyper::upgrade::OnUpgrade>() } else { None };
        strip_hop_by_hop(&mut parts.headers, upgrade);

        // Context for the next hop.
        let headers = &mut parts.headers;
        headers.insert(L5D_DST_SERVICE, route.dst_service.clone());
        match &route.ctx_dtab {
            Some(ctx) => headers.insert(L5D_CTX_DTAB, ctx.clone()),
            None => headers.remove(L5D_CTX_DTAB),
        };
        // The next hop is a span of the caller's trace, or the first of a new one.
        let trace = caller.trace.map_or_else(TraceId::root, |trace| trace.child());
        headers.insert(L5D_CTX_TRACE, trace.header_value());
        headers.insert(L5D_REQID, trace.request_id());
        append_via(headers, parts.version);
        // The deadline passed on is the stricter of the caller's and this hop's total timeout.
        let mut caller_deadline = None;
        if caller.deadline.is_some() || self.settings.total_timeout.is_some() {
            let now_ns = wall_clock_ns();
            let own = self.settings.total_timeout.map(|timeout| Deadline::after(now_ns, timeout));
            let passed_on = match (caller.deadline, own) {
                (Some(theirs), Some(own)) => Some(theirs.combined(own)),
                (theirs, own) => theirs.or(own),
            };
            if let Some(deadline) = passed_on {
                headers.insert(L5D_CTX_DEADLINE, deadline.header_value());
            }
            if self.settings.enforce_deadline {
                caller_deadline = caller.deadline.map(|theirs| started + theirs.remaining(now_ns));
            }
        }

        let http2 = !upgrade
            && match self.settings.protocol {
                UpstreamProtocol::Auto => parts.version == Version::HTTP_2 || grpc,
                UpstreamProtocol::Http1 => grpc,
                UpstreamProtocol::Http2 => true,
            };
        parts.version = if http2 { Version::HTTP_2 } else { Version::HTTP_11 };
        // Only a request without a body can be sent again: bodies are streamed, not kept.
        let replayable = body.is_end_stream();
        let body = if replayable { None } else { Some(RequestBody::Streaming(Stalling::new(body, request_body_idle))) };
        Outbound { route, parts, body, on_upgrade, grpc, http2, replayable, caller_deadline }
    }

    /// Records a request's outcome for its logical name, and returns how it counted. A router
    /// further down the path, nearer the service, has the last word (`l5d-success-class`).
    /// gRPC calls whose status comes in trailers are recorded when the trailers pass.
    fn record(
        &self,
        route: &Route,
        result: &mut Result<Response<ResponseBody>, RouterError>,
        latency: Duration,
        grpc: bool,
    ) -> Option<Class> {
        match result {
            Ok(response) if response.body().awaits_trailers() => {
                response.body_mut().record_service_on_trailers(route.metrics.clone(), latency);
                None
            }
            Ok(response) => {
                // The method only matters for retry decisions, which are made per attempt.
                let (status, headers) = (response.status(), response.headers());
                let class = Class::from_success_class(headers)
                    .unwrap_or_else(|| classify(&self.settings.classifier, &Method::GET, grpc, status, headers));
                route.metrics.record(status, class, latency);
                Some(class)
            }
            Err(error) => {
                let class = Class::Failure { retryable: false };
                route.metrics.record(error.status(), class, latency);
                Some(class)
            }
        }
    }

    /// The error for a request out of time: the caller's deadline when that came first,
    /// else the total timeout.
    fn out_of_time(&self, out: &Outbound, started: Instant) -> RouterError {
        let name = out.route.key.name.clone();
        match (out.caller_deadline, self.settings.total_timeout) {
            (Some(theirs), total) if total.is_none_or(|total| theirs <= started + total) => {
                let remaining_ms = theirs.saturating_duration_since(started).as_millis() as u64;
                RouterError::DeadlineExceeded { name, remaining_ms }
            }
            (_, total) => RouterError::TotalTimeout { name, timeout_ms: total.map_or(0, |t| t.as_millis() as u64) },
        }
    }

    /// Sends the request to an endpoint, retrying while it is safe and the budget allows.
    async fn forward(
        &self,
        out: &mut Outbound,
        started: Instant,
        why: &mut Explanation,
        listener: &ListenerProxy,
    ) -> Result<Response<ResponseBody>, RouterError> {
        self.keep_small_body(out).await?;
        let route = &out.route;
        let (replayable, grpc, http2) = (out.replayable, out.grpc, out.http2);
        why.retryable = false;
        let idempotent = is_idempotent(&out.parts.method);
        // Recomputed where needed rather than kept: every byte kept here is kept per request.
        let deadlines = || Deadlines {
            total: match (self.settings.total_timeout.map(|t| started + t), out.caller_deadline) {
                (Some(own), Some(theirs)) => Some(own.min(theirs)),
                (own, theirs) => own.or(theirs),
            },
            per_try: self.settings.attempt_timeout,
        };
        // Binding waits no longer than the caller does.
        let binding_deadline = match out.caller_deadline {
            Some(theirs) => theirs.min(started + self.settings.binding_timeout),
            None => started + self.settings.binding_timeout,
        };
        let mut retries = 0u32;

        loop {
            if out.caller_deadline.is_some_and(|theirs| Instant::now() >= theirs) {
                return Err(self.out_of_time(out, started));
            }
            let Destination { concrete, residual, endpoint } = match self.choose(route, binding_deadline, why).await {
                Ok(destination) => destination,
                Err(RouterError::BindingTimeout { .. }) if out.caller_deadline == Some(binding_deadline) => {
                    return Err(self.out_of_time(out, started));
                }
                Err(error) => return Err(error),
            };
            if listener.is_itself(endpoint.addr, &out.parts) {
                let (name, addr, listener) = (route.key.name.clone(), endpoint.addr, listener.name.clone());
                return Err(RouterError::Loop { name, addr, listener });
            }
            // A retry takes a copy; the last (or only) attempt takes the original.
            let may_retry = replayable && retries < self.settings.max_retries;
            let mut attempt_parts = if may_retry {
                out.parts.clone()
            } else {
                let rest = parts_of(&out.parts.method);
                std::mem::replace(&mut out.parts, rest)
            };
            attempt_parts.uri = upstream_uri(&attempt_parts, &endpoint);
            attempt_parts.headers.insert(L5D_DST_CLIENT, concrete.dst_client.clone());
            if let Some(residual) = residual {
                attempt_parts.headers.insert(L5D_DST_RESIDUAL, residual.clone());
            }
            let attempt_body = match &out.body {
                Some(kept @ RequestBody::Buffered { .. }) if may_retry => kept.replay(),
                _ => out.body.take().unwrap_or(RequestBody::Empty),
            };
            let request = Request::from_parts(attempt_parts, attempt_body);

            let in_flight = endpoint.start();
            let client_metrics = &concrete.metrics;
            client_metrics.requests.inc();
            let attempt_started = Instant::now();
            let sent = endpoint.client.get(http2).request(request);
            let outcome = match deadlines().attempt_deadline() {
                // Boxed: only requests with a deadline carry a timer.
                Some(deadline) => Box::pin(tokio::time::timeout_at(deadline, sent)).await.ok(),
                None => Some(sent.await),
            };
            let attempt = || format!("{} at {}", concrete.id, endpoint.addr);
            let (error, safe) = match outcome {
                Some(Ok(mut response)) => {
                    let latency = attempt_started.elapsed();
                    endpoint.observe_rtt(latency);
                    let mut class = classify(
                        &self.settings.classifier,
                        &out.parts.method,
                        grpc,
                        response.status(),
                        response.headers(),
                    );
                    // An earlier router says its failure is safe to send again.
                    if response.headers().get(L5D_RETRYABLE).is_some_and(|v| v == "true") && class != Class::Success {
                        class = Class::Failure { retryable: true };
                    }
                    // A gRPC call's status usually comes in its trailers: counted then.
                    let awaits_trailers = grpc
                        && response.status() == StatusCode::OK
                        && crate::retry::grpc_status(response.headers()).is_none();
                    if !awaits_trailers {
                        client_metrics.record(response.status(), class, latency);
                    }
                    match class {
                        Class::Success => endpoint.record_success(),
                        Class::Failure { .. } => endpoint.record_failure(),
                    }
                    if class == (Class::Failure { retryable: true })
                        && may_retry
                        && self.allow_retry(route, &deadlines())
                    {
                        why.attempts.push(format!("{}: {}", attempt(), response.status()));
                        retries += 1;
                        continue;
                    }
                    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
                    strip_hop_by_hop(response.headers_mut(), switching);
                    if switching {
                        if let Some(downstream) = out.on_upgrade.take() {
                            splice_upgrade(downstream, hyper::upgrade::on(&mut response));
                        }
                        return Ok(response.map(|_| ResponseBody::empty()));
                    }
                    let outcome = awaits_trailers
                        .then(|| GrpcOutcome::new(self.settings.classifier.clone(), client_metrics.clone(), latency));
                    let idle = self.settings.response_body_idle_timeout;
                    return Ok(response.map(|b| ResponseBody::upstream(b, in_flight, outcome, idle)));
                }
                Some(Err(e)) => {
                    // The client's own body failed (malformed, or abandoned half-way): the
                    // endpoint is not to blame, and the client gets a 400 or 408.
                    if let Some(error) = RouterError::from_request_body(&e) {
                        why.attempts.push(format!("{}: {error}", attempt()));
                        return Err(error);
                    }
                    endpoint.record_failure();
                    client_metrics.record(
                        StatusCode::BAD_GATEWAY,
                        Class::Failure { retryable: true },
                        attempt_started.elapsed(),
                    );
                    let cause = chain(&e);
                    why.attempts.push(format!("{}: {cause}", attempt()));
                    // A connect failure never reached the destination; other failures may
                    // have, so only idempotent requests are sent again after them.
                    let connect = e.is_connect();
                    let addr = endpoint.addr;
                    let error = if connect {
                        RouterError::Connect { addr, cause }
                    } else {
                        RouterError::Upstream { addr, cause }
                    };
                    (error, replayable && (connect || idempotent))
                }
                None => {
                    endpoint.record_failure();
                    client_metrics.record(
                        StatusCode::SERVICE_UNAVAILABLE,
                        Class::Failure { retryable: true },
                        attempt_started.elapsed(),
                    );
                    why.attempts.push(format!("{}: timed out", attempt()));
                    if deadlines().total.is_some_and(|t| Instant::now() >= t) {
                        why.retryable = replayable && idempotent;
                        return Err(self.out_of_time(out, started));
                    }
                    let timeout_ms = self.settings.attempt_timeout.map_or(0, |t| t.as_millis() as u64);
                    (RouterError::AttemptTimeout { addr: endpoint.addr, timeout_ms }, replayable && idempotent)
                }
            };
            drop(in_flight);
            if safe && may_retry && self.allow_retry(route, &deadlines()) {
                retries += 1;
                continue;
            }
            why.retryable = safe;
            return Err(error);
        }
    }

    /// Reads a small request body whole (see `max_replay_body_bytes`), so that the request
    /// can be sent again. gRPC calls and upgrades keep streaming.
    async fn keep_small_body(&self, out: &mut Outbound) -> Result<(), RouterError> {
        let small =
            out.parts.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let fits = small.is_some_and(|n| n <= self.settings.max_replay_body_bytes);
        if out.replayable || !fits || out.grpc || out.on_upgrade.is_some() {
            return Ok(());
        }
        let Some(body @ RequestBody::Streaming(_)) = out.body.take() else { return Ok(()) };
        let limit = usize::try_from(self.settings.max_replay_body_bytes).unwrap_or(usize::MAX);
        let collected =
            http_body_util::BodyExt::collect(http_body_util::Limited::new(body, limit)).await.map_err(|e| {
                RouterError::from_request_body(&*e).unwrap_or_else(|| RouterError::RequestBody { cause: chain(&*e) })
            })?;
        let trailers = collected.trailers().cloned();
        out.body = Some(RequestBody::Buffered { data: Some(collected.to_bytes()), trailers });
        out.replayable = true;
        Ok(())
    }

    /// A retry is allowed while time is left and the logical name's budget has one.
    fn allow_retry(&self, route: &Route, deadlines: &Deadlines) -> bool {
        if deadlines.total.is_some_and(|t| Instant::now() >= t) {
            return false;
        }
        if route.budget.try_withdraw() {
            route.metrics.retries.inc();
            true
        } else {
            route.metrics.budget_exhausted.inc();
            false
        }
    }
}

/// Empty request parts but for the method, which classifying the response still needs.
fn parts_of(method: &Method) -> http::request::Parts {
    let mut parts = Request::new(()).into_parts().0;
    parts.method = method.clone();
    parts
}

/// Joins the client's and the endpoint's upgraded connections (WebSocket and the like) and
/// copies bytes both ways until either side closes.
fn splice_upgrade(downstream: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        let (down, up) = match tokio::try_join!(downstream, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let mut down = hyper_util::rt::TokioIo::new(down);
        let mut up = hyper_util::rt::TokioIo::new(up);
        if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
            tracing::debug!(error = %e, "upgraded connection ended");
        }
    });
}
