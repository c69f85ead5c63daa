//! Test helpers: controllable naming, real upstream servers and a router started in-process.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use waymark_dtab::global::InetTarget;
use waymark_dtab::{Addr, BindOptions, BindOutcome, Dtab, Namers, Path, bind_path};
use waymark_interpreter::{BindState, Resolver};
use waymark_router::{App, NamerStatus, Naming, RouterConfig};

/// A resolver whose dtab and address sets tests change at will: bindings use the built-in
/// namers; `/$/inet/<ip>/<port>` ids resolve to that address unless a test says otherwise.
#[derive(Default)]
pub struct TestResolver {
    dtab: Mutex<Dtab>,
    bindings: Mutex<Vec<(Path, Dtab, watch::Sender<BindState>)>>,
    addrs: Mutex<HashMap<Path, watch::Sender<Addr>>>,
    /// When set, every binding stays pending.
    pub pending: std::sync::atomic::AtomicBool,
    /// Fixed bound trees for some names, as a namer might send them (with `Alt` nodes).
    fixed: Mutex<HashMap<Path, BindState>>,
}

impl TestResolver {
    pub fn new(dtab: &str) -> Arc<Self> {
        let r = TestResolver::default();
        *r.dtab.lock().unwrap() = dtab.parse().unwrap();
        Arc::new(r)
    }

    fn bind_now(&self, path: &Path, local: &Dtab) -> BindState {
        if self.pending.load(Ordering::Relaxed) {
            return BindState::Pending;
        }
        if let Some(fixed) = self.fixed.lock().unwrap().get(path) {
            return fixed.clone();
        }
        let dtab = self.dtab.lock().unwrap().concat(local);
        match bind_path(&dtab, &Namers::new(), path, BindOptions::default()).outcome {
            BindOutcome::Bound(tree) => BindState::Bound(Arc::new(tree)),
            BindOutcome::Pending => BindState::Pending,
            BindOutcome::Failed(e) => BindState::Failed(e.to_string().into()),
        }
    }

    /// Replaces the dtab; every binding is bound again.
    pub fn set_dtab(&self, dtab: &str) {
        *self.dtab.lock().unwrap() = dtab.parse().unwrap();
        self.rebind();
    }

    pub fn rebind(&self) {
        for (path, local, tx) in self.bindings.lock().unwrap().iter() {
            tx.send_replace(self.bind_now(path, local));
        }
    }

    /// Binds `path` to `tree` (bound ids, any shape) from now on.
    pub fn set_tree(&self, path: &str, tree: &str) {
        let tree: waymark_dtab::NameTree<Path> = tree.parse().unwrap();
        let bound = tree.map(&mut |id| waymark_dtab::BoundLeaf {
            name: waymark_dtab::BoundName::new(id, Path::empty()),
            weight: None,
        });
        self.fixed.lock().unwrap().insert(path.parse().unwrap(), BindState::Bound(Arc::new(bound)));
        self.rebind();
    }

    /// Sets the address set of bound id `id`.
    pub fn set_addr(&self, id: &str, addr: Addr) {
        let id: Path = id.parse().unwrap();
        let mut addrs = self.addrs.lock().unwrap();
        match addrs.get(&id) {
            Some(tx) => {
                tx.send_replace(addr);
            }
            None => {
                addrs.insert(id, watch::Sender::new(addr));
            }
        }
    }
}

impl Resolver for TestResolver {
    fn bind(&self, path: &Path, local: &Dtab) -> watch::Receiver<BindState> {
        let (tx, rx) = watch::channel(self.bind_now(path, local));
        self.bindings.lock().unwrap().push((path.clone(), local.clone(), tx));
        rx
    }

    fn resolve(&self, id: &Path) -> watch::Receiver<Addr> {
        let mut addrs = self.addrs.lock().unwrap();
        addrs
            .entry(id.clone())
            .or_insert_with(|| {
                let addr = match InetTarget::from_id(id).and_then(|t| t.literal_ip().map(|ip| (ip, t.port))) {
                    Some((ip, port)) => Addr::bound([SocketAddr::new(ip, port)]),
                    None => Addr::Neg,
                };
                watch::Sender::new(addr)
            })
            .subscribe()
    }
}

/// A real HTTP/1.1 + HTTP/2 server that answers with its name and what it saw.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    /// Requests served.
    pub hits: Arc<AtomicUsize>,
    /// When not zero, every response has this status.
    pub fail_with: Arc<AtomicU16>,
    /// When not zero, every response waits this long (milliseconds).
    pub delay_ms: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// `/$/inet/127.0.0.1/<port>`
    pub fn id(&self) -> String {
        format!("/$/inet/127.0.0.1/{}", self.addr.port())
    }
}

/// Which HTTP versions an upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaks {
    /// HTTP/1.1 and HTTP/2 with prior knowledge.
    Both,
    /// HTTP/1.1 only: an HTTP/2 preface is an error.
    Http1,
    /// HTTP/2 with prior knowledge only.
    Http2,
}

/// Starts an upstream. Requests may ask for `x-delay-ms`, `x-status`, a response header
/// (`x-respond-with: name=value`) and a response trailer (`x-respond-trailer: name=value`,
/// declared in `Trailer`); the response body is JSON: `{"upstream", "version", "headers":
/// {name: value}, "trailers": {name: value}, "body_len"}`; a request with `Upgrade: echo` is
/// switched and then echoes bytes, one with `Upgrade: websocket` (and the key of RFC 6455's
/// example) is accepted and echoes every frame it gets.
pub async fn upstream(name: &str) -> Upstream {
    upstream_speaking(name, Speaks::Both).await
}

/// An upstream that speaks only `speaks`.
pub async fn upstream_speaking(name: &str, speaks: Speaks) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let fail_with = Arc::new(AtomicU16::new(0));
    let delay_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (n, h, f, d) = (name.to_string(), hits.clone(), fail_with.clone(), delay_ms.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let (n, h, f, d) = (n.clone(), h.clone(), f.clone(), d.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(req, n.clone(), h.clone(), f.clone(), d.clone()));
                let io = TokioIo::new(stream);
                let _ = match speaks {
                    Speaks::Both => {
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection_with_upgrades(io, svc)
                            .await
                    }
                    Speaks::Http1 => hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .with_upgrades()
                        .await
                        .map_err(Into::into),
                    Speaks::Http2 => hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await
                        .map_err(Into::into),
                };
            });
        }
    });
    Upstream { addr, name: name.to_string(), hits, fail_with, delay_ms, task }
}

async fn handle(
    mut req: Request<Incoming>,
    name: String,
    hits: Arc<AtomicUsize>,
    fail_with: Arc<AtomicU16>,
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
) -> Result<Response<UpstreamBody>, Infallible> {
    hits.fetch_add(1, Ordering::SeqCst);
    let delay = delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if let Some(ms) = req.headers().get("x-delay-ms").and_then(|v| v.to_str().ok()?.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if req.headers().get("upgrade").is_some_and(|v| v == "echo") {
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut resp = Response::new(body_of(Bytes::new(), None));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut().insert("connection", "upgrade".parse().unwrap());
        resp.headers_mut().insert("upgrade", "echo".parse().unwrap());
        return Ok(resp);
    }
    if req.headers().get("upgrade").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket")) {
        return Ok(websocket(req));
    }
    // A header sent several times shows as its values joined with ", ".
    let mut headers = serde_json::Map::new();
    for (k, v) in req.headers() {
        let v = v.to_str().unwrap_or("?");
        match headers.get_mut(k.as_str()) {
            Some(serde_json::Value::String(seen)) => *seen = format!("{seen}, {v}"),
            _ => {
                headers.insert(k.to_string(), v.into());
            }
        }
    }
    let version = format!("{:?}", req.version());
    let status = req
        .headers()
        .get("x-status")
        .and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
        .or(Some(fail_with.load(Ordering::SeqCst)).filter(|s| *s != 0))
        .unwrap_or(200);
    let collected = req.into_body().collect().await.ok();
    let mut trailers = serde_json::Map::new();
    for (k, v) in collected.as_ref().and_then(|c| c.trailers()).into_iter().flatten() {
        trailers.insert(k.to_string(), v.to_str().unwrap_or("?").into());
    }
    let body = collected.map(|c| c.to_bytes()).unwrap_or_default();
    let json = serde_json::json!({
        "upstream": name, "version": version, "headers": headers, "trailers": trailers, "body_len": body.len(),
    });
    let trailer = headers.get("x-respond-trailer").and_then(|v| v.as_str()?.split_once('=')).map(|(name, value)| {
        let mut map = HeaderMap::new();
        map.insert(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        map
    });
    let declared = trailer.as_ref().and_then(|t| t.keys().next().cloned());
    let mut resp = Response::new(body_of(Bytes::from(json.to_string()), trailer));
    if let Some(name) = declared {
        resp.headers_mut().insert("trailer", http::HeaderValue::from_str(name.as_str()).unwrap());
    }
    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
    if let Some((name, value)) = headers.get("x-respond-with").and_then(|v| v.as_str()?.split_once('=')) {
        resp.headers_mut().insert(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
    }
    resp.headers_mut().insert("x-upstream", name.parse().unwrap());
    resp.headers_mut().insert("l5d-upstream-secret", "internal".parse().unwrap());
    Ok(resp)
}

/// An upstream's response body: data, then trailers when there are any.
pub type UpstreamBody =
    http_body_util::StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<http_body::Frame<Bytes>, Infallible>>>>;

fn body_of(data: Bytes, trailers: Option<HeaderMap>) -> UpstreamBody {
    let mut frames = vec![Ok(http_body::Frame::data(data))];
    if let Some(trailers) = trailers {
        frames.push(Ok(http_body::Frame::trailers(trailers)));
    }
    http_body_util::StreamBody::new(futures::stream::iter(frames))
}

/// RFC 6455's example handshake key, and the answer it must get.
pub const WEBSOCKET_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WEBSOCKET_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Accepts a WebSocket (for RFC 6455's example key only: enough for tests, and no SHA-1 is
/// needed) and echoes every frame: unmasked, as a server sends them.
fn websocket(mut req: Request<Incoming>) -> Response<UpstreamBody> {
    if req.headers().get("sec-websocket-key").is_none_or(|k| k != WEBSOCKET_KEY) {
        let mut resp = Response::new(body_of(Bytes::from_static(b"unknown key"), None));
        *resp.status_mut() = StatusCode::BAD_REQUEST;
        return resp;
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(upgraded) = on_upgrade.await else { return };
        let mut io = TokioIo::new(upgraded);
        loop {
            let mut head = [0u8; 2];
            if io.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = usize::from(head[1] & 0x7f);
            assert!(len < 126, "test frames are short");
            let mut mask = [0u8; 4];
            if head[1] & 0x80 != 0 && io.read_exact(&mut mask).await.is_err() {
                return;
            }
            let mut payload = vec![0u8; len];
            if io.read_exact(&mut payload).await.is_err() {
                return;
            }
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
            let mut frame = vec![head[0], len as u8];
            frame.extend_from_slice(&payload);
            if io.write_all(&frame).await.is_err() {
                return;
            }
        }
    });
    let mut resp = Response::new(body_of(Bytes::new(), None));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut().insert("connection", "upgrade".parse().unwrap());
    resp.headers_mut().insert("upgrade", "websocket".parse().unwrap());
    resp.headers_mut().insert("sec-websocket-accept", WEBSOCKET_ACCEPT.parse().unwrap());
    resp
}

/// A running router.
pub struct Router {
    pub addrs: Vec<SocketAddr>,
    pub admin: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Router {
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Asks the router to shut down (drain) and returns at once.
    pub fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The YAML of a router on ephemeral ports, with `extra` appended (top-level keys).
pub fn config(extra: &str) -> RouterConfig {
    let admin = if extra.contains("admin:") { "" } else { "admin:\n  port: 0\n" };
    let listeners = if extra.contains("listeners:") { "" } else { "listeners:\n  - port: 0\n" };
    let yaml = format!("{admin}{listeners}{extra}");
    RouterConfig::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

/// Starts a router binding through `resolver`, with naming reported by `status`.
pub async fn router_with(config: RouterConfig, naming: Naming) -> Router {
    let app = App::with_naming(config, naming).await.unwrap();
    let (addrs, admin) = (app.listener_addrs().to_vec(), app.admin_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        app.run(async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    Router { addrs, admin, stop: Some(stop), task }
}

pub async fn router(config: RouterConfig, resolver: Arc<TestResolver>) -> Router {
    router_with(config, Naming::from_resolver(resolver, None)).await
}

/// Naming whose status a test controls.
pub fn naming_with_status(resolver: Arc<TestResolver>) -> (Naming, watch::Sender<NamerStatus>) {
    let (tx, rx) = watch::channel(NamerStatus {
        reachable: true,
        ever_reached: true,
        dtab: Some("/svc=>/$/inet/127.0.0.1".parse().unwrap()),
        version: Some("1".into()),
        last_error: None,
    });
    struct None_;
    impl waymark_router::Delegator for None_ {
        fn delegate(
            &self,
            _: Path,
            _: Dtab,
        ) -> futures::future::BoxFuture<'static, Result<waymark_dtab::json::DelegateJson, String>> {
            Box::pin(async { Err("none".to_string()) })
        }
    }
    (Naming::with_status(resolver, Arc::new(None_), rx, "default".into()), tx)
}

pub type H1 = Client<HttpConnector, Full<Bytes>>;

pub fn h1() -> H1 {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2() -> H1 {
    Client::builder(TokioExecutor::new()).http2_only(true).build_http()
}

/// A response, read whole.
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }

    /// The upstream that answered.
    pub fn upstream(&self) -> String {
        self.json()["upstream"].as_str().unwrap().to_string()
    }

    /// A header the upstream saw on the request.
    pub fn seen(&self, header: &str) -> Option<String> {
        self.json()["headers"][header].as_str().map(str::to_string)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends a GET to the router at `addr` for host `host` with extra headers.
pub async fn get(client: &H1, addr: SocketAddr, host: &str, headers: &[(&str, &str)]) -> Got {
    let mut req = Request::builder().uri(format!("http://{addr}/path?q=1")).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(client, req.body(Full::new(Bytes::new())).unwrap()).await
}

pub async fn send(client: &H1, req: Request<Full<Bytes>>) -> Got {
    let resp = client.request(req).await.expect("request failed");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Got { status: parts.status, headers: parts.headers, body }
}

/// The admin endpoint's body.
pub async fn admin_get(admin: SocketAddr, path: &str) -> (StatusCode, String) {
    let got =
        send(&h1(), Request::builder().uri(format!("http://{admin}{path}")).body(Full::new(Bytes::new())).unwrap())
            .await;
    (got.status, got.text())
}

/// The value of the metric line starting with `prefix` (name and labels).
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}
