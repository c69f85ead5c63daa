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
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::watch;
use tokio::time::Instant;
use waymark_dtab::{Dtab, Path};

use crate::balance::BalanceSettings;
use crate::balance::Endpoint;
use crate::balance::InFlight;
use crate::body::{BoxError, GrpcOutcome, RequestBody, ResponseBody, Stalling, Streamed};
use crate::caller::{
    Caller, Deadline, L5D_CTX_DEADLINE, L5D_CTX_TRACE, TraceId, append_via, call_depth, wall_clock_ns,
};
use crate::client::ClientSettings;
use crate::client::Wire;
use crate::config::RouterConfig;
use crate::conn::ConnectionInfo;
use crate::context::{
    L5D_CTX_DTAB, L5D_DST_CLIENT, L5D_DST_RESIDUAL, L5D_DST_SERVICE, L5D_REQID, L5D_RETRYABLE, L5D_SUCCESS_CLASS,
    has_l5d, strip_l5d, take_override,
};
use crate::errors::{Explanation, RouterError, chain, respond};
use crate::identify::{Identified, Identifier, IdentifierConfig, identify};
use crate::metrics::Metrics;
use crate::metrics::RefusedLabels;
use crate::naming::Naming;
use crate::outcome::{self, AttemptEnd};
use crate::retry::{Class, ClassifierConfig, Deadlines, is_idempotent};
use crate::routes::{Choice, Concrete, Endpoints, OverridesBusy, Route, RouteKey, RouteState, Routes};
use crate::server::ListenerConfig;

/// Settings of the pipeline, from configuration.
#[derive(Debug, Clone)]
pub(crate) struct ProxySettings {
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

impl ProxySettings {
    pub(crate) fn new(config: &RouterConfig) -> Self {
        ProxySettings {
            binding_timeout: Duration::from_millis(config.binding_timeout_ms),
            total_timeout: config.service.total_timeout_ms.map(Duration::from_millis),
            attempt_timeout: config.client.request_attempt_timeout_ms.map(Duration::from_millis),
            classifier: Arc::new(config.service.response_classifier.clone()),
            max_override_bytes: config.max_override_bytes,
            max_retries: config.service.retries.max_per_request,
            max_replay_body_bytes: config.service.retries.max_replay_body_bytes,
            enforce_deadline: config.service.enforce_deadline,
            response_body_idle_timeout: Duration::from_millis(config.client.response_body_idle_timeout_ms),
        }
    }
}

impl Proxy {
    /// The pipeline of a router configured with `config`, binding through `naming`.
    pub(crate) fn new(
        config: &RouterConfig,
        naming: Naming,
        client: Arc<ClientSettings>,
        metrics: Arc<Metrics>,
    ) -> Arc<Proxy> {
        let balance = Arc::new(BalanceSettings::new(&config.client.load_balancer, &config.client.failure_accrual));
        let routes = Routes::new(
            naming.resolver.clone(),
            metrics,
            client,
            balance,
            config.service.retries.budget.clone(),
            &config.binding_cache,
        );
        Arc::new(Proxy { routes, naming, settings: ProxySettings::new(config) })
    }
}

impl ListenerProxy {
    /// The pipeline as `listener` (bound to `bound`) runs it.
    pub(crate) fn new(
        proxy: Arc<Proxy>,
        listener: &ListenerConfig,
        identifiers: &[IdentifierConfig],
        prefix: &Path,
        bound: SocketAddr,
    ) -> Self {
        ListenerProxy {
            refused: proxy.routes.metrics().refused_requests.clone(),
            proxy,
            identifiers: identifiers.iter().map(|i| i.build(prefix)).collect(),
            trusted: listener.is_trusted(),
            max_call_depth: listener.max_call_depth,
            name: listener.name.clone(),
            request_body_idle_timeout: Duration::from_millis(listener.request_body_idle_timeout_ms),
            empty_dtab: Dtab::empty(),
            bound,
        }
    }

    /// Serves one request. Never fails: errors become responses here.
    ///
    /// Everything up to the first wait (identify, the dtab context, bind) runs here, before
    /// the returned future exists, so that the future only holds what the waiting part needs:
    /// hyper keeps one per request in flight.
    pub(crate) fn serve<B>(
        self: Arc<Self>,
        req: Request<B>,
    ) -> impl Future<Output = Result<Response<ResponseBody>, Infallible>> + Send + 'static
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
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
    fn route<B>(
        &self,
        mut req: Request<B>,
        started: Instant,
        why: &mut Explanation,
    ) -> Result<Outbound, Box<(RouterError, Option<Path>)>>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
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
    /// For a request to switch protocols: the client's side of the switch, and its
    /// connection, which stays counted while the tunnel lives.
    on_upgrade: Option<(hyper::upgrade::OnUpgrade, Option<Arc<ConnectionInfo>>)>,
    grpc: bool,
    upgrade: bool,
    /// The version the client speaks, which the response is given in.
    downstream: Version,
    /// No body: the request can be sent again.
    replayable: bool,
    /// The caller's deadline, when this hop enforces it.
    caller_deadline: Option<Instant>,
}

impl Outbound {
    /// The request of one attempt at `destination`: a retry takes a copy, the last (or only)
    /// attempt the original.
    fn attempt(&mut self, destination: &Destination, wire: Wire, may_retry: bool) -> Request<RequestBody> {
        let mut parts = if may_retry {
            self.parts.clone()
        } else {
            let rest = parts_of(&self.parts.method);
            std::mem::replace(&mut self.parts, rest)
        };
        parts.version = if wire == Wire::Http2 { Version::HTTP_2 } else { Version::HTTP_11 };
        // An HTTP/1.1 server sends trailers only to a client that says it takes them; a
        // client of this router over HTTP/2 always does.
        if wire != Wire::Http2 && self.downstream == Version::HTTP_2 {
            parts.headers.insert(TE, HeaderValue::from_static("trailers"));
        }
        parts.uri = upstream_uri(&parts, &destination.endpoint);
        parts.headers.insert(L5D_DST_CLIENT, destination.concrete.dst_client.clone());
        if let Some(residual) = &destination.residual {
            parts.headers.insert(L5D_DST_RESIDUAL, residual.clone());
        }
        let body = match &self.body {
            Some(kept @ RequestBody::Buffered { .. }) if may_retry => kept.replay(),
            _ => self.body.take().unwrap_or(RequestBody::Empty),
        };
        Request::from_parts(parts, body)
    }
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
    #[allow(clippy::too_many_arguments)]
    fn outbound<B>(
        &self,
        route: Arc<Route>,
        req: Request<B>,
        grpc: bool,
        caller: Caller,
        started: Instant,
        request_body_idle: Duration,
    ) -> Outbound
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let mut req = req;
        let upgrade = is_upgrade(&mut req);
        let (mut parts, body) = req.into_parts();
        let on_upgrade = match parts.extensions.remove::<hyper::upgrade::OnUpgrade>() {
            Some(on_upgrade) if upgrade => Some((on_upgrade, parts.extensions.get::<Arc<ConnectionInfo>>().cloned())),
            _ => None,
        };
        let downstream = parts.version;
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

        // Only a request without a body can be sent again: bodies are streamed, not kept.
        let replayable = body.is_end_stream();
        let body = (!replayable).then(|| RequestBody::Streaming(Stalling::new(Streamed::new(body), request_body_idle)));
        Outbound { route, parts, body, on_upgrade, grpc, upgrade, downstream, replayable, caller_deadline }
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
                outcome::request_ended(&route.metrics, status, class, latency);
                Some(class)
            }
            Err(error) => {
                let class = Class::Failure { retryable: false };
                outcome::request_ended(&route.metrics, error.status(), class, latency);
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

    /// Sends the request to an endpoint, retrying while it is safe and the budget allows:
    /// choose a destination, dispatch an attempt, judge its outcome, and again if need be.
    async fn forward(
        &self,
        out: &mut Outbound,
        started: Instant,
        why: &mut Explanation,
        listener: &ListenerProxy,
    ) -> Result<Response<ResponseBody>, RouterError> {
        self.keep_small_body(out).await?;
        let route = out.route.clone();
        why.retryable = false;
        let idempotent = is_idempotent(&out.parts.method);
        // Recomputed where needed rather than kept: every byte kept here is kept per request.
        let deadlines = |out: &Outbound| Deadlines {
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
            // balance: a bound name and one of its endpoints.
            let destination = match self.choose(&route, binding_deadline, why).await {
                Ok(destination) => destination,
                Err(RouterError::BindingTimeout { .. }) if out.caller_deadline == Some(binding_deadline) => {
                    return Err(self.out_of_time(out, started));
                }
                Err(error) => return Err(error),
            };
            if listener.is_itself(destination.endpoint.addr, &out.parts) {
                let (name, addr, listener) = (route.key.name.clone(), destination.endpoint.addr, listener.name.clone());
                return Err(RouterError::Loop { name, addr, listener });
            }
            let Destination { concrete, endpoint, .. } = &destination;
            let may_retry = out.replayable && retries < self.settings.max_retries;
            let wire = endpoint.client.wire(out.upgrade, out.grpc, concrete.protocol);
            let request = out.attempt(&destination, wire, may_retry);

            // client: one attempt.
            let in_flight = endpoint.start();
            concrete.metrics.requests.inc();
            let attempt_started = Instant::now();
            let dispatched = dispatch(endpoint, request, wire, deadlines(out).attempt_deadline()).await;
            let latency = attempt_started.elapsed();
            let attempt = || format!("{} at {}", concrete.id, endpoint.addr);
            let (error, safe) = match dispatched {
                Dispatched::Answered(response) => {
                    let class = self.judge(out, &response);
                    // A gRPC call's status usually comes in its trailers: counted then.
                    let awaits_trailers = out.grpc
                        && response.status() == StatusCode::OK
                        && crate::retry::grpc_status(response.headers()).is_none();
                    let end = if awaits_trailers {
                        AttemptEnd::AwaitingTrailers { class }
                    } else {
                        AttemptEnd::Answered { status: response.status(), class }
                    };
                    outcome::attempt_ended(endpoint, &concrete.metrics, end, latency);
                    if class == (Class::Failure { retryable: true })
                        && may_retry
                        && self.allow_retry(&route, &deadlines(out))
                    {
                        why.attempts.push(format!("{}: {}", attempt(), response.status()));
                        retries += 1;
                        continue;
                    }
                    let grpc = awaits_trailers
                        .then(|| GrpcOutcome::new(self.settings.classifier.clone(), concrete.metrics.clone(), latency));
                    return Ok(self.relay(out, response, in_flight, grpc));
                }
                Dispatched::Failed(e) => {
                    // The client's own body failed (malformed, or abandoned half-way): the
                    // endpoint is not to blame, and the client gets a 400 or 408.
                    if let Some(error) = RouterError::from_request_body(&e) {
                        why.attempts.push(format!("{}: {error}", attempt()));
                        return Err(error);
                    }
                    outcome::attempt_ended(endpoint, &concrete.metrics, AttemptEnd::Failed, latency);
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
                    (error, out.replayable && (connect || idempotent))
                }
                Dispatched::TimedOut => {
                    outcome::attempt_ended(endpoint, &concrete.metrics, AttemptEnd::TimedOut, latency);
                    why.attempts.push(format!("{}: timed out", attempt()));
                    if deadlines(out).total.is_some_and(|t| Instant::now() >= t) {
                        why.retryable = out.replayable && idempotent;
                        return Err(self.out_of_time(out, started));
                    }
                    let timeout_ms = self.settings.attempt_timeout.map_or(0, |t| t.as_millis() as u64);
                    (RouterError::AttemptTimeout { addr: endpoint.addr, timeout_ms }, out.replayable && idempotent)
                }
            };
            drop(in_flight);
            if safe && may_retry && self.allow_retry(&route, &deadlines(out)) {
                retries += 1;
                continue;
            }
            why.retryable = safe;
            return Err(error);
        }
    }

    /// How an endpoint's answer counts: by the classifier, and as retryable when an earlier
    /// router says its failure is safe to send again (`l5d-retryable`).
    fn judge(&self, out: &Outbound, response: &Response<Incoming>) -> Class {
        let (status, headers) = (response.status(), response.headers());
        let class = classify(&self.settings.classifier, &out.parts.method, out.grpc, status, headers);
        if headers.get(L5D_RETRYABLE).is_some_and(|v| v == "true") && class != Class::Success {
            return Class::Failure { retryable: true };
        }
        class
    }

    /// The endpoint's response, on its way to the client: hop-by-hop headers gone, in the
    /// version the client speaks, its body streamed (or, for a switch of protocols, the two
    /// connections joined).
    fn relay(
        &self,
        out: &mut Outbound,
        mut response: Response<Incoming>,
        in_flight: InFlight,
        grpc: Option<GrpcOutcome>,
    ) -> Response<ResponseBody> {
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        strip_hop_by_hop(response.headers_mut(), switching);
        *response.version_mut() = out.downstream;
        if switching {
            if let Some((downstream, connection)) = out.on_upgrade.take() {
                splice_upgrade(downstream, hyper::upgrade::on(&mut response), connection);
            }
            return response.map(|_| ResponseBody::empty());
        }
        let idle = self.settings.response_body_idle_timeout;
        response.map(|body| ResponseBody::upstream(body, in_flight, grpc, idle))
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

/// What one attempt at an endpoint came to.
enum Dispatched {
    Answered(Response<Incoming>),
    Failed(hyper_util::client::legacy::Error),
    TimedOut,
}

/// Sends `request` to `endpoint` as `wire` says, giving up at `deadline`.
async fn dispatch(
    endpoint: &Endpoint,
    request: Request<RequestBody>,
    wire: Wire,
    deadline: Option<Instant>,
) -> Dispatched {
    let sent = endpoint.client.get(wire).request(request);
    let outcome = match deadline {
        // Boxed: only requests with a deadline carry a timer.
        Some(deadline) => Box::pin(tokio::time::timeout_at(deadline, sent)).await.ok(),
        None => Some(sent.await),
    };
    match outcome {
        Some(Ok(response)) => Dispatched::Answered(response),
        Some(Err(e)) => Dispatched::Failed(e),
        None => Dispatched::TimedOut,
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
fn splice_upgrade(
    downstream: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    connection: Option<Arc<ConnectionInfo>>,
) {
    tokio::spawn(async move {
        // The client's connection counts against its listener's limit until the tunnel ends.
        let _connection = connection;
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    use super::*;
    use crate::client::tests::InMemory;

    /// An endpoint in this process, reached over in-memory pipes: it answers with the version
    /// and path it saw, and with the status in `x-status` (a 503 the first `fail_first` times).
    fn endpoint(fail_first: usize) -> (InMemory, Arc<AtomicUsize>) {
        let seen = Arc::new(AtomicUsize::new(0));
        let hits = seen.clone();
        let memory = InMemory::new(move |io| {
            let hits = hits.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let n = hits.fetch_add(1, Ordering::SeqCst);
                    async move {
                        if req.uri().path() == "/slow" {
                            tokio::time::sleep(Duration::from_secs(60)).await;
                        }
                        let text = format!("{:?} {}", req.version(), req.uri().path());
                        let mut response = Response::new(Full::new(Bytes::from(text)));
                        if n < fail_first {
                            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(io), service)
                    .await;
            });
        });
        (memory, seen)
    }

    /// A listener's pipeline over a standalone dtab, whose endpoints are `memory`.
    async fn pipeline(yaml: &str, memory: InMemory) -> Arc<ListenerProxy> {
        let config = RouterConfig::from_yaml(yaml).unwrap();
        let crate::naming::InterpreterConfig::Standalone { dtab, .. } = &config.interpreter else {
            panic!("standalone")
        };
        let naming = Naming::standalone(dtab.parse().unwrap(), &[]).await.unwrap();
        let mut client = ClientSettings::new(&config.client).unwrap();
        client.memory = Some(memory);
        let proxy = Proxy::new(&config, naming, Arc::new(client), Metrics::new());
        let listener = &config.listeners[0];
        let bound = SocketAddr::from(([127, 0, 0, 1], 4140));
        Arc::new(ListenerProxy::new(proxy, listener, &config.identifier, &config.prefix(listener), bound))
    }

    const STANDALONE: &str = "interpreter:\n  kind: standalone\n  dtab: /svc => /$/inet/127.0.0.1/8080\n";

    async fn text(response: Response<ResponseBody>) -> String {
        String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn the_whole_pipeline_runs_without_sockets() {
        let (memory, hits) = endpoint(0);
        let proxy = pipeline(STANDALONE, memory).await;
        let request = Request::get("/hello").header("host", "web").body(Full::new(Bytes::new())).unwrap();
        let response = proxy.clone().serve(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[L5D_SUCCESS_CLASS], "1.0");
        assert_eq!(text(response).await, "HTTP/1.1 /hello");
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        // Recorded once, for the logical and the bound name.
        let metrics = proxy.proxy.routes.metrics().encode();
        for series in [
            r#"router_service_responses_total{service="/svc/web",status_class="2xx",classification="success"} 1"#,
            r#"router_client_responses_total{client="/$/inet/127.0.0.1/8080",status_class="2xx",classification="success"} 1"#,
        ] {
            assert!(metrics.contains(series), "{series} in\n{metrics}");
        }
    }

    #[tokio::test]
    async fn the_connection_a_request_came_on_reaches_the_balancer() {
        let (memory, hits) = endpoint(0);
        let proxy = pipeline(STANDALONE, memory).await;
        // A connection accepted on the very address the name is bound to: a loop, which
        // the balance stage can only see through the request's connection context.
        let connections = crate::conn::Connections::new(
            "outbound",
            crate::conn::ServerLimits {
                header_read_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(10),
                max_connections: 10,
            },
            &Default::default(),
        );
        let local = SocketAddr::from(([127, 0, 0, 1], 8080));
        let info = connections.open(SocketAddr::from(([127, 0, 0, 1], 5555)), local, None, None);
        let mut request = Request::get("/").header("host", "web").body(Full::new(Bytes::new())).unwrap();
        request.extensions_mut().insert(info);
        let response = proxy.serve(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert!(text(response).await.contains("this router's own listener"));
        assert_eq!(hits.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_routing_failure_becomes_a_response_in_the_one_place() {
        let (memory, hits) = endpoint(0);
        let proxy = pipeline("interpreter:\n  kind: standalone\n  dtab: /svc/web => ~\n", memory).await;
        let request = Request::get("/").header("host", "web").body(Full::new(Bytes::new())).unwrap();
        let response = proxy.serve(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert!(response.headers().contains_key(crate::context::L5D_ERR));
        assert!(text(response).await.contains("/svc/web is not bound"));
        assert_eq!(hits.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_retryable_failure_is_sent_again_within_the_budget() {
        let (memory, hits) = endpoint(1);
        let yaml = format!("{STANDALONE}service:\n  response_classifier:\n    kind: retryable_read_5xx\n");
        let proxy = pipeline(&yaml, memory).await;
        let request = Request::get("/").header("host", "web").body(Full::new(Bytes::new())).unwrap();
        let response = proxy.clone().serve(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(hits.load(Ordering::SeqCst), 2, "the 503 was retried");
        let metrics = proxy.proxy.routes.metrics().encode();
        assert!(metrics.contains(r#"router_service_retries_total{service="/svc/web"} 1"#), "{metrics}");
    }

    #[tokio::test]
    async fn dispatching_an_attempt_speaks_the_wire_it_is_given() {
        let (memory, _) = endpoint(0);
        let mut settings = ClientSettings::new(&crate::client::ClientConfig::default()).unwrap();
        settings.memory = Some(memory);
        let addr = SocketAddr::from(([127, 0, 0, 1], 8080));
        let client = crate::client::EndpointClient::new(addr, None, Arc::new(settings), Default::default());
        let balance = Arc::new(BalanceSettings::new(&Default::default(), &Default::default()));
        let endpoint = Endpoint::new(addr, 1.0, client, balance);
        for (wire, version) in [(Wire::Http1, Version::HTTP_11), (Wire::Http2, Version::HTTP_2)] {
            let mut request = Request::new(RequestBody::Empty);
            *request.uri_mut() = "http://web/x".parse().unwrap();
            *request.version_mut() = version;
            let Dispatched::Answered(response) = dispatch(&endpoint, request, wire, None).await else {
                panic!("no answer over {wire:?}")
            };
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, format!("{version:?} /x"));
        }
        // An answer later than the attempt's deadline is not waited for.
        let mut request = Request::new(RequestBody::Empty);
        *request.uri_mut() = "http://web/slow".parse().unwrap();
        let deadline = Instant::now() + Duration::from_millis(50);
        assert!(matches!(dispatch(&endpoint, request, Wire::Http1, Some(deadline)).await, Dispatched::TimedOut));
    }
}
