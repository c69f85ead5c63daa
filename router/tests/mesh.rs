//! The namer client against a real gRPC server implementing the `io.linkerd.mesh` services,
//! whose state the test controls: bindings, dtab changes, namer loss and return.

mod support;

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use http::StatusCode;
use support::*;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use waymark_dtab::global::InetTarget;
use waymark_dtab::{Addr, BindOptions, BindOutcome, Dtab, NameTree, Namers, Path, bind, delegate};
use waymark_proto::convert::VersionedDtab;
use waymark_proto::mesh;
use waymark_proto::mesh::delegator_server::{Delegator, DelegatorServer};
use waymark_proto::mesh::interpreter_server::{Interpreter, InterpreterServer};
use waymark_proto::mesh::resolver_server::{Resolver, ResolverServer};
use waymark_proto::request::{BindRequest, DelegateTreeRequest};

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A namer serving one dtab (changeable) with the built-in namers.
#[derive(Clone)]
struct Namer {
    dtab: watch::Receiver<(u64, Dtab)>,
    /// Flipped to true to end every stream with UNAVAILABLE, as a dying namer would.
    dying: watch::Receiver<bool>,
}

fn bound_tree(dtab: &Dtab, name: &Path) -> mesh::BoundTreeRsp {
    let tree = match bind(dtab, &Namers::new(), &NameTree::Leaf(name.clone()), BindOptions::default()).outcome {
        BindOutcome::Bound(tree) => tree,
        _ => NameTree::Neg,
    };
    mesh::BoundTreeRsp::from(&tree)
}

/// Sends `make(state)` now and on every change, until the namer dies.
fn changes<S, T>(
    mut rx: watch::Receiver<S>,
    mut dying: watch::Receiver<bool>,
    make: impl Fn(&S) -> T + Send + 'static,
) -> Stream_<T>
where
    S: Send + Sync + 'static,
    T: Send + 'static,
{
    Box::pin(async_stream(move |tx| async move {
        loop {
            let item = make(&rx.borrow_and_update());
            if tx.send(Ok(item)).await.is_err() {
                return;
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                _ = until_true(&mut dying) => {
                    let _ = tx.send(Err(Status::unavailable("namer going away"))).await;
                    return;
                }
            }
        }
    }))
}

/// Resolves once the watch holds true (or its sender is gone).
async fn until_true(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// A stream fed by a task.
fn async_stream<T, F, Fut>(f: F) -> impl Stream<Item = T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(f(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[tonic::async_trait]
impl Interpreter for Namer {
    async fn get_bound_tree(&self, req: Request<mesh::BindReq>) -> Result<Response<mesh::BoundTreeRsp>, Status> {
        let req = BindRequest::try_from(req.get_ref())?;
        Ok(Response::new(bound_tree(&self.dtab.borrow().1.concat(&req.dtab), &req.name)))
    }
    type StreamBoundTreeStream = Stream_<mesh::BoundTreeRsp>;
    async fn stream_bound_tree(
        &self,
        req: Request<mesh::BindReq>,
    ) -> Result<Response<Self::StreamBoundTreeStream>, Status> {
        let req = BindRequest::try_from(req.get_ref())?;
        if req.name.to_string().contains("refused") {
            return Err(Status::invalid_argument("this namer does not bind that"));
        }
        Ok(Response::new(changes(self.dtab.clone(), self.dying.clone(), move |(_, dtab)| {
            bound_tree(&dtab.concat(&req.dtab), &req.name)
        })))
    }
}

fn replicas(id: &mesh::ReplicasReq) -> mesh::Replicas {
    let id = Path::try_from(id.id.as_ref().unwrap()).unwrap();
    let addr = match InetTarget::from_id(&id).and_then(|t| Some(SocketAddr::new(t.literal_ip()?, t.port))) {
        Some(sa) => Addr::bound([sa]),
        None => Addr::Neg,
    };
    mesh::Replicas::from(&addr)
}

#[tonic::async_trait]
impl Resolver for Namer {
    async fn get_replicas(&self, req: Request<mesh::ReplicasReq>) -> Result<Response<mesh::Replicas>, Status> {
        Ok(Response::new(replicas(req.get_ref())))
    }
    type StreamReplicasStream = Stream_<mesh::Replicas>;
    async fn stream_replicas(
        &self,
        req: Request<mesh::ReplicasReq>,
    ) -> Result<Response<Self::StreamReplicasStream>, Status> {
        let req = req.into_inner();
        Ok(Response::new(changes(self.dtab.clone(), self.dying.clone(), move |_| replicas(&req))))
    }
}

fn dtab_rsp((version, dtab): &(u64, Dtab)) -> mesh::DtabRsp {
    mesh::DtabRsp::from(&VersionedDtab { version: version.to_string().into_bytes(), dtab: dtab.clone() })
}

#[tonic::async_trait]
impl Delegator for Namer {
    async fn get_dtab(&self, _req: Request<mesh::DtabReq>) -> Result<Response<mesh::DtabRsp>, Status> {
        Ok(Response::new(dtab_rsp(&self.dtab.borrow())))
    }
    type StreamDtabStream = Stream_<mesh::DtabRsp>;
    async fn stream_dtab(&self, _req: Request<mesh::DtabReq>) -> Result<Response<Self::StreamDtabStream>, Status> {
        Ok(Response::new(changes(self.dtab.clone(), self.dying.clone(), dtab_rsp)))
    }
    async fn get_delegate_tree(
        &self,
        req: Request<mesh::DelegateTreeReq>,
    ) -> Result<Response<mesh::DelegateTreeRsp>, Status> {
        let req = DelegateTreeRequest::try_from(req.get_ref())?;
        let NameTree::Leaf(path) = req.tree else { return Err(Status::invalid_argument("leaf only")) };
        let dtab = self.dtab.borrow().1.concat(&req.dtab);
        let tree = delegate(&dtab, &Namers::new(), &path, 100).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(mesh::DelegateTreeRsp::from(&tree)))
    }
    type StreamDelegateTreeStream = Stream_<mesh::DelegateTreeRsp>;
    async fn stream_delegate_tree(
        &self,
        req: Request<mesh::DelegateTreeReq>,
    ) -> Result<Response<Self::StreamDelegateTreeStream>, Status> {
        let one = self.get_delegate_tree(req).await?.into_inner();
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(one)]))))
    }
}

/// A running namer: change its dtab, or stop it.
struct RunningNamer {
    dtab: watch::Sender<(u64, Dtab)>,
    dying: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Accepted connections with Nagle's algorithm off, as a namer's should be: otherwise each
/// new stream's answer waits for a delayed ACK (about 40 ms).
fn nodelay(
    listener: tokio::net::TcpListener,
) -> impl Stream<Item = std::io::Result<tokio::net::TcpStream>> + Send + 'static {
    use futures::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        let conn = conn?;
        conn.set_nodelay(true)?;
        Ok(conn)
    })
}

async fn start_namer(addr: SocketAddr, dtab: &str) -> RunningNamer {
    let (dtab_tx, dtab_rx) = watch::channel((1, dtab.parse().unwrap()));
    let (dying_tx, dying_rx) = watch::channel(false);
    let namer = Namer { dtab: dtab_rx, dying: dying_rx.clone() };
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let mut stop = dying_rx;
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(InterpreterServer::new(namer.clone()))
            .add_service(ResolverServer::new(namer.clone()))
            .add_service(DelegatorServer::new(namer))
            .serve_with_incoming_shutdown(nodelay(listener), async move {
                until_true(&mut stop).await;
            })
            .await
            .unwrap();
    });
    RunningNamer { dtab: dtab_tx, dying: dying_tx, task }
}

impl RunningNamer {
    fn set_dtab(&self, dtab: &str) {
        self.dtab.send_modify(|(v, d)| {
            *v += 1;
            *d = dtab.parse().unwrap();
        });
    }

    async fn stop(self) {
        let _ = self.dying.send(true);
        let _ = self.task.await;
    }
}

/// Polls `check` until it holds, at most `tries` times (a bound, not a timing assertion).
async fn eventually<F, Fut>(tries: usize, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..tries {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn routes_through_the_namer_and_survives_its_loss_and_return() {
    let (v1, v2, v3) = (upstream("v1").await, upstream("v2").await, upstream("v3").await);
    let free = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let namer_addr = free.local_addr().unwrap();
    drop(free);
    let namer = start_namer(namer_addr, &format!("/svc/web => {}", v1.id())).await;
    let cfg = config(&format!(
        "interpreter:\n  kind: mesh\n  dst: {namer_addr}\n  namespace: default\n  retry_base_ms: 20\n  retry_max_ms: 100\n"
    ));
    let app = waymark_router::App::build(cfg).await.unwrap();
    let (addr, admin) = (app.listener_addrs()[0], app.admin_addr());
    let task = tokio::spawn(app.run(std::future::pending()));
    let client = h1();

    assert_eq!(get(&client, addr, "web", &[]).await.upstream(), "v1");
    // A per-request override travels to the namer as the BindReq dtab.
    let got = get(&client, addr, "web", &[("l5d-dtab", &format!("/svc/web => {}", v3.id()))]).await;
    assert_eq!(got.upstream(), "v3");
    let (code, tree) = admin_get(admin, "/delegator.json?path=/svc/web").await;
    assert_eq!(code, StatusCode::OK, "{tree}");
    assert!(tree.contains(&v1.id()), "{tree}");
    let (_, metrics) = admin_get(admin, "/metrics").await;
    assert_eq!(metric(&metrics, r#"router_dtab_version{namespace="default",version="1"}"#), Some(1.0), "{metrics}");
    assert!(metric(&metrics, r#"router_namer_streams{kind="bound_tree"}"#).unwrap() >= 1.0);

    // A refusal about one name fails that name at once, and the namer is still reachable.
    let refused = get(&client, addr, "refused", &[]).await;
    assert_eq!(refused.status, StatusCode::BAD_GATEWAY, "{}", refused.text());
    assert!(refused.text().contains("the namer refused: this namer does not bind that"), "{}", refused.text());
    let (_, metrics) = admin_get(admin, "/metrics").await;
    assert_eq!(metric(&metrics, "router_namer_connected "), Some(1.0));

    // A dtab change reaches the router without a restart.
    namer.set_dtab(&format!("/svc/web => {}", v2.id()));
    assert!(eventually(100, || async { get(&client, addr, "web", &[]).await.upstream() == "v2" }).await);

    // The namer goes away: the router keeps serving what it knew, and says so.
    namer.stop().await;
    assert!(
        eventually(100, || async {
            let (_, m) = admin_get(admin, "/metrics").await;
            metric(&m, "router_namer_connected ") == Some(0.0)
        })
        .await
    );
    for _ in 0..20 {
        assert_eq!(get(&client, addr, "web", &[]).await.upstream(), "v2");
    }
    let (code, ready) = admin_get(admin, "/ready").await;
    assert_eq!(code, StatusCode::OK);
    assert!(ready.contains("namer unreachable"), "{ready}");

    // It comes back with another dtab: the router reconnects and follows.
    let namer = start_namer(namer_addr, &format!("/svc/web => {}", v3.id())).await;
    assert!(eventually(200, || async { get(&client, addr, "web", &[]).await.upstream() == "v3" }).await);
    let (_, metrics) = admin_get(admin, "/metrics").await;
    assert_eq!(metric(&metrics, "router_namer_connected "), Some(1.0));
    assert!(metric(&metrics, "router_namer_reconnects_total").unwrap() >= 1.0);
    namer.stop().await;
    task.abort();
}

#[tokio::test]
async fn override_churn_leaves_plain_traffic_its_last_known_route_when_the_namer_goes() {
    let web = upstream("web").await;
    let free = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let namer_addr = free.local_addr().unwrap();
    drop(free);
    let namer = start_namer(namer_addr, &format!("/svc/web => {}", web.id())).await;
    let cfg = config(&format!(
        "interpreter:\n  kind: mesh\n  dst: {namer_addr}\n  namespace: default\n  retry_base_ms: 20\n  retry_max_ms: 100\n\
         binding_cache:\n  max_bindings: 50\n  max_override_bindings: 20\n  max_override_total_bytes: 65536\n"
    ));
    let app = waymark_router::App::build(cfg).await.unwrap();
    let (addr, admin) = (app.listener_addrs()[0], app.admin_addr());
    let task = tokio::spawn(app.run(std::future::pending()));
    let client = h1();
    assert_eq!(get(&client, addr, "web", &[]).await.status, StatusCode::OK);

    // A client sends far more distinct overrides than the router keeps, some of them large.
    let padding = "a".repeat(6_000);
    for i in 0..300 {
        let dtab = if i % 10 == 0 { format!("/x{i} => /{padding}") } else { format!("/x{i} => /y") };
        let got = get(&client, addr, "web", &[("l5d-dtab", &dtab)]).await;
        assert_eq!(got.status, StatusCode::OK, "override {i}: {}", got.text());
    }
    let (_, metrics) = admin_get(admin, "/metrics").await;
    assert!(metric(&metrics, "router_override_bindings ").unwrap() <= 20.0, "{metrics}");
    assert!(metric(&metrics, "router_override_binding_bytes ").unwrap() <= 65536.0, "{metrics}");

    // The namer goes away: plain traffic still has the binding it had before the churn.
    namer.stop().await;
    assert!(
        eventually(100, || async {
            let (_, m) = admin_get(admin, "/metrics").await;
            metric(&m, "router_namer_connected ") == Some(0.0)
        })
        .await
    );
    for _ in 0..10 {
        let got = get(&client, addr, "web", &[]).await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.text());
        assert_eq!(got.upstream(), "web");
    }
    task.abort();
}
