//! The namer client: bindings, replicas and the namespace's dtab streamed from a namer's
//! `io.linkerd.mesh` gRPC API.
//!
//! One `StreamBoundTree` per distinct (name, override) and one `StreamReplicas` per bound id,
//! shared by every binding that needs them, open while watched and closed when the last
//! watcher goes. A stream that fails is opened again after a jittered, doubling backoff
//! (reset by every message); meanwhile its last state stays in effect, so the router keeps
//! serving what it knew.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tracing::Instrument;
use waymark_dtab::json::DelegateJson;
use waymark_dtab::{Addr, BoundLeaf, DelegateTree, Dtab, NameTree, Path};
use waymark_interpreter::{BindState, Resolver};
use waymark_proto::convert::VersionedDtab;
use waymark_proto::mesh;
use waymark_proto::mesh::delegator_client::DelegatorClient;
use waymark_proto::mesh::interpreter_client::InterpreterClient;
use waymark_proto::mesh::resolver_client::ResolverClient;
use waymark_proto::request::{BindRequest, DelegateTreeRequest, dtab_req, replicas_req};
use waymark_random::Backoff;
use waymark_tls::ClientTls;

use crate::errors::with_causes;
use crate::metrics::{Metrics, StreamLabels};
use crate::naming::{Delegator, NamerStatus, Naming};
use crate::sync::lock;

/// A client of one namer, for one namespace.
#[derive(Clone)]
pub(crate) struct MeshClient {
    inner: Arc<Inner>,
}

struct Inner {
    channel: Channel,
    namespace: String,
    backoff: Backoff,
    binds: Shared<(Path, Dtab), BindState>,
    replicas: Shared<Path, Addr>,
    status: watch::Sender<NamerStatus>,
    /// Set once the router has said that the namer was never reached.
    warned_unreached: std::sync::atomic::AtomicBool,
    metrics: Arc<Metrics>,
}

/// Streams shared by key: the map holds each stream's sender weakly.
type Shared<K, T> = Mutex<HashMap<K, Weak<watch::Sender<T>>>>;

/// What one stream kind needs to know.
struct StreamKind {
    label: &'static str,
    open: Gauge,
}

/// The version bytes as text when they are text, else as hex.
fn version_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => s.to_string(),
        _ => bytes.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

impl MeshClient {
    /// A client of the namer at `dst` (`host:port`); connections are made on first use and
    /// made again as needed.
    pub(crate) fn new(
        dst: &str,
        namespace: &str,
        base: Duration,
        max: Duration,
        tls: Option<&ClientTls>,
        metrics: Arc<Metrics>,
    ) -> Result<MeshClient, String> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{dst}"))
            .map_err(|e| format!("namer address {dst:?}: {e}"))?
            .connect_timeout(Duration::from_secs(3))
            // Detect a dead namer connection even when nothing changes (Linkerd 1 #2219).
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        if let Some(tls) = tls {
            let files = tls.read().map_err(|e| format!("namer TLS: {e}"))?;
            let host = dst.rsplit_once(':').map_or(dst, |(host, _)| host).trim_start_matches('[').trim_end_matches(']');
            let mut config = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(files.ca))
                .domain_name(tls.server_name.as_deref().unwrap_or(host));
            if let Some((cert, key)) = files.identity {
                config = config.identity(Identity::from_pem(cert, key));
            }
            endpoint = endpoint.tls_config(config).map_err(|e| format!("namer TLS: {e}"))?;
        }
        let (status, _) = watch::channel(NamerStatus::default());
        Ok(MeshClient {
            inner: Arc::new(Inner {
                channel: endpoint.connect_lazy(),
                namespace: namespace.to_string(),
                backoff: Backoff::new(base, max),
                binds: Mutex::default(),
                replicas: Mutex::default(),
                status,
                warned_unreached: Default::default(),
                metrics,
            }),
        })
    }

    /// Naming through this client; starts following the namespace's dtab.
    pub(crate) fn naming(self) -> Naming {
        let status = self.inner.status.subscribe();
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(follow_dtab(weak).instrument(tracing::info_span!("namer_dtab")));
        let namespace = self.inner.namespace.clone();
        let client = Arc::new(self);
        Naming::with_status(client.clone(), client, status, namespace)
    }

    fn kind(&self, label: &'static str) -> StreamKind {
        StreamKind { label, open: self.inner.metrics.namer_streams.get_or_create_owned(&StreamLabels { kind: label }) }
    }
}

impl Inner {
    fn reached(&self) {
        self.status.send_if_modified(|s| {
            let changed = !s.reachable || !s.ever_reached;
            s.reachable = true;
            s.ever_reached = true;
            changed
        });
    }

    fn lost(&self, error: &tonic::Status) {
        let mut never_reached = false;
        let was = self.status.send_if_modified(|s| {
            never_reached = !s.ever_reached;
            // The message and the errors under it, such as why a TLS handshake failed.
            s.last_error = Some(with_causes(error.message().to_string(), std::error::Error::source(error)));
            std::mem::replace(&mut s.reachable, false)
        });
        if was {
            tracing::warn!(error = %error.message(), code = ?error.code(), "namer unreachable; serving the last known state");
        } else if never_reached && !self.warned_unreached.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(error = %error.message(), code = ?error.code(), "namer not reachable yet; retrying");
        }
    }
}

/// Shares one stream per key: the map holds the sender weakly, the stream task strongly, and
/// the task ends once every receiver is gone.
fn shared<K, T, F, Fut>(map: &Shared<K, T>, key: K, initial: T, start: F) -> watch::Receiver<T>
where
    K: Eq + Hash + Clone,
    F: FnOnce(Arc<watch::Sender<T>>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut map = lock(map);
    if let Some(tx) = map.get(&key).and_then(Weak::upgrade) {
        return tx.subscribe();
    }
    map.retain(|_, w| w.strong_count() > 0);
    let (tx, rx) = watch::channel(initial);
    let tx = Arc::new(tx);
    map.insert(key, Arc::downgrade(&tx));
    tokio::spawn(start(tx));
    rx
}

/// True for failures of the namer or the way to it, as opposed to an answer about the
/// request (a malformed name, say).
fn is_unreachable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
    )
}

/// Runs a server stream until nobody watches `tx`: `open` opens the stream, `apply` turns each
/// message into a state. Failures back off and open again; while the namer is unreachable the
/// last state stays, and an error about the request itself becomes the state `refused` makes.
async fn follow<T, M, O, OFut, A, R>(
    inner: Weak<Inner>,
    kind: StreamKind,
    tx: Arc<watch::Sender<T>>,
    open: O,
    apply: A,
    refused: R,
) where
    T: PartialEq + Send + Sync + 'static,
    M: Send + 'static,
    O: Fn(Arc<Inner>) -> OFut,
    OFut: Future<Output = Result<tonic::Streaming<M>, tonic::Status>>,
    A: Fn(&M) -> Option<T>,
    R: Fn(&tonic::Status) -> Option<T>,
{
    let mut failures: u32 = 0;
    loop {
        let Some(client) = inner.upgrade() else { return };
        let backoff = client.backoff;
        let opened = tokio::select! {
            opened = open(client.clone()) => opened,
            _ = tx.closed() => return,
        };
        let error = match opened {
            Ok(mut stream) => {
                kind.open.inc();
                let ended = loop {
                    let message = tokio::select! {
                        m = stream.message() => m,
                        _ = tx.closed() => {
                            kind.open.dec();
                            return;
                        }
                    };
                    match message {
                        Ok(Some(message)) => {
                            failures = 0;
                            client.reached();
                            if let Some(state) = apply(&message) {
                                tx.send_if_modified(|current| {
                                    let changed = *current != state;
                                    *current = state;
                                    changed
                                });
                            }
                        }
                        Ok(None) => break tonic::Status::unavailable("the namer ended the stream"),
                        Err(status) => break status,
                    }
                };
                kind.open.dec();
                ended
            }
            Err(status) => status,
        };
        if is_unreachable(&error) {
            client.lost(&error);
        } else if let Some(state) = refused(&error) {
            tx.send_replace(state);
        }
        client.metrics.namer_reconnects.inc();
        let delay = backoff.delay(failures);
        failures = failures.saturating_add(1);
        tracing::debug!(stream = kind.label, error = %error.message(), delay_ms = delay.as_millis() as u64, "namer stream failed");
        drop(client);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = tx.closed() => return,
        }
    }
}

async fn follow_dtab(inner: Weak<Inner>) {
    let Some(client) = inner.upgrade() else { return };
    let kind = StreamKind {
        label: "dtab",
        open: client.metrics.namer_streams.get_or_create_owned(&StreamLabels { kind: "dtab" }),
    };
    // The status sender lives in the client; follow it through a local watch of the dtab.
    let (tx, mut rx) = watch::channel::<Option<VersionedDtab>>(None);
    let tx = Arc::new(tx);
    let status = client.status.clone();
    drop(client);
    let updates = tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let Some(v) = rx.borrow_and_update().clone() else { continue };
            status.send_modify(|s| {
                s.version = Some(version_text(&v.version));
                s.dtab = Some(v.dtab);
            });
        }
    });
    follow(
        inner,
        kind,
        tx,
        |client| {
            let mut grpc = DelegatorClient::new(client.channel.clone());
            let req = dtab_req(&client.namespace);
            async move { grpc.stream_dtab(req).await.map(tonic::Response::into_inner) }
        },
        |rsp: &mesh::DtabRsp| VersionedDtab::try_from(rsp).ok().map(Some),
        // An unknown namespace binds like an empty dtab: keep reporting what was last seen.
        |_| None,
    )
    .await;
    updates.abort();
}

impl Resolver for MeshClient {
    fn bind(&self, path: &Path, local: &Dtab) -> watch::Receiver<BindState> {
        let key = (path.clone(), local.clone());
        let weak = Arc::downgrade(&self.inner);
        let kind = self.kind("bound_tree");
        let request = mesh::BindReq::from(&BindRequest {
            namespace: self.inner.namespace.clone(),
            name: path.clone(),
            dtab: local.clone(),
        });
        let span = tracing::debug_span!("namer_bind", name = %path);
        shared(&self.inner.binds, key, BindState::Pending, move |tx| {
            follow(
                weak,
                kind,
                tx,
                move |client| {
                    let mut grpc = InterpreterClient::new(client.channel.clone());
                    let mut req = tonic::Request::new(request.clone());
                    // Keep every usable alternative, so that a request can fall through to the
                    // next one when an alternative has no endpoints.
                    req.metadata_mut().insert(
                        waymark_proto::request::ALTERNATIVES_METADATA,
                        tonic::metadata::MetadataValue::from_static(waymark_proto::request::KEEP_ALTERNATIVES),
                    );
                    async move { grpc.stream_bound_tree(req).await.map(tonic::Response::into_inner) }
                },
                |rsp: &mesh::BoundTreeRsp| match NameTree::<BoundLeaf>::try_from(rsp) {
                    Ok(tree) => Some(BindState::Bound(Arc::new(tree))),
                    Err(e) => Some(BindState::Failed(format!("the namer sent a malformed tree: {e}").into())),
                },
                |status: &tonic::Status| {
                    Some(BindState::Failed(format!("the namer refused: {}", status.message()).into()))
                },
            )
            .instrument(span)
        })
    }

    fn resolve(&self, id: &Path) -> watch::Receiver<Addr> {
        let weak = Arc::downgrade(&self.inner);
        let kind = self.kind("replicas");
        let request = replicas_req(id);
        let span = tracing::debug_span!("namer_replicas", id = %id);
        shared(&self.inner.replicas, id.clone(), Addr::Pending, move |tx| {
            follow(
                weak,
                kind,
                tx,
                move |client| {
                    let mut grpc = ResolverClient::new(client.channel.clone());
                    let req = request.clone();
                    async move { grpc.stream_replicas(req).await.map(tonic::Response::into_inner) }
                },
                |rsp: &mesh::Replicas| {
                    Some(Addr::try_from(rsp).unwrap_or_else(|e| Addr::Failed { cause: e.to_string() }))
                },
                |status: &tonic::Status| {
                    Some(Addr::Failed { cause: format!("the namer refused: {}", status.message()) })
                },
            )
            .instrument(span)
        })
    }
}

impl Delegator for MeshClient {
    fn delegate(&self, path: Path, local: Dtab) -> BoxFuture<'static, Result<DelegateJson, String>> {
        let mut grpc = DelegatorClient::new(self.inner.channel.clone());
        let req = mesh::DelegateTreeReq::from(&DelegateTreeRequest {
            namespace: self.inner.namespace.clone(),
            tree: NameTree::Leaf(path),
            dtab: local,
        });
        Box::pin(async move {
            let rsp = tokio::time::timeout(Duration::from_secs(5), grpc.get_delegate_tree(req))
                .await
                .map_err(|_| "the namer did not answer within 5 s".to_string())?
                .map_err(|status| format!("the namer answered {:?}: {}", status.code(), status.message()))?;
            let tree = DelegateTree::try_from(&rsp.into_inner()).map_err(|e| e.to_string())?;
            Ok(DelegateJson::from_tree(&tree, &mut |_| None))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_show_as_text_or_hex() {
        assert_eq!(version_text(b"42"), "42");
        assert_eq!(version_text(&[0, 255]), "00ff");
    }
}
