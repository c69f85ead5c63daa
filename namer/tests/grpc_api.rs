//! The `io.l5d.mesh` gRPC API, through real sockets: every method, the request conventions of
//! namerd, streaming with latest-state coalescing, and a request shaped exactly as Linkerd 1
//! sends it.

mod common;

use std::time::Duration;

use common::Namer;
use tonic::Code;
use tonic::transport::Channel;
use waymark_dtab::{Addr, BoundLeaf, DelegateTree, Dtab, NameTree, Path};
use waymark_proto::convert::VersionedDtab;
use waymark_proto::mesh::{
    self, codec_client::CodecClient, delegator_client::DelegatorClient, interpreter_client::InterpreterClient,
    resolver_client::ResolverClient,
};
use waymark_proto::request::{BindRequest, DelegateTreeRequest, dtab_req, replicas_req};

fn p(s: &str) -> Path {
    s.parse().unwrap()
}

fn d(s: &str) -> Dtab {
    s.parse().unwrap()
}

async fn channel(namer: &Namer) -> Channel {
    Channel::from_shared(format!("http://{}", namer.mesh)).unwrap().connect().await.unwrap()
}

async fn put(namer: &Namer, ns: &str, dtab: &str) {
    let response = reqwest::Client::new()
        .put(namer.url(&format!("/api/1/dtabs/{ns}")))
        .header("content-type", "application/dtab")
        .body(dtab.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
}

fn bind_req(ns: &str, name: &str, dtab: &str) -> mesh::BindReq {
    mesh::BindReq::from(&BindRequest { namespace: ns.into(), name: p(name), dtab: d(dtab) })
}

fn tree_of(rsp: &mesh::BoundTreeRsp) -> String {
    NameTree::<BoundLeaf>::try_from(rsp).unwrap().to_string()
}

async fn next<T>(stream: &mut tonic::Streaming<T>) -> Result<T, tonic::Status> {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a message in time")
        .map(|m| m.expect("the stream is still open"))
}

#[tokio::test]
async fn bound_trees_are_served_once_and_streamed() {
    let namer = common::start("{}").await;
    put(&namer, "default", "/svc=>/$/inet/127.0.0.1/1").await;
    let mut client = InterpreterClient::new(channel(&namer).await);

    let one = client.get_bound_tree(bind_req("default", "/svc", "")).await.unwrap().into_inner();
    assert_eq!(tree_of(&one), "/$/inet/127.0.0.1/1");
    // The request dtab is appended, so it wins.
    let over = client.get_bound_tree(bind_req("default", "/svc", "/svc=>/$/inet/127.0.0.1/2")).await.unwrap();
    assert_eq!(tree_of(over.get_ref()), "/$/inet/127.0.0.1/2");
    // A namespace that does not exist binds through the namers alone.
    let bare = client.get_bound_tree(bind_req("missing", "/$/inet/127.0.0.1/3", "")).await.unwrap();
    assert_eq!(tree_of(bare.get_ref()), "/$/inet/127.0.0.1/3");

    let mut stream = client.stream_bound_tree(bind_req("default", "/svc", "")).await.unwrap().into_inner();
    assert_eq!(tree_of(&next(&mut stream).await.unwrap()), "/$/inet/127.0.0.1/1");
    put(&namer, "default", "/svc=>0.9*/$/inet/127.0.0.1/1 & 0.1*/$/inet/127.0.0.1/4").await;
    assert_eq!(tree_of(&next(&mut stream).await.unwrap()), "0.90*/$/inet/127.0.0.1/1 & 0.10*/$/inet/127.0.0.1/4");

    // A binding that fails ends the stream with the reason.
    put(&namer, "default", "/svc=>/svc").await;
    let status = next(&mut stream).await.unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert!(status.message().contains("Max recursion level"), "{status:?}");
    namer.stop().await;
}

/// A dtab sending `/svc` to a union of 300 addresses starting at `base`: large bound trees,
/// so that a few unread updates fill every buffer between the namer and the client.
fn wide_dtab(base: u16) -> String {
    let branches: Vec<String> = (0..300).map(|i| format!("/$/inet/127.0.0.1/{}", base + i)).collect();
    format!("/svc=>{}", branches.join(" & "))
}

#[tokio::test]
async fn alternatives_bind_as_finagle_does_unless_the_client_asks_to_keep_them() {
    let namer = common::start("{}").await;
    put(&namer, "default", "/svc=>/$/inet/127.0.0.1/2 | /$/inet/127.0.0.1/1").await;
    let mut client = InterpreterClient::new(channel(&namer).await);
    let first = client.get_bound_tree(bind_req("default", "/svc", "")).await.unwrap();
    assert_eq!(tree_of(first.get_ref()), "/$/inet/127.0.0.1/2");
    let mut keep = tonic::Request::new(bind_req("default", "/svc", ""));
    keep.metadata_mut().insert(
        waymark_proto::request::ALTERNATIVES_METADATA,
        tonic::metadata::MetadataValue::from_static(waymark_proto::request::KEEP_ALTERNATIVES),
    );
    let kept = client.get_bound_tree(keep).await.unwrap();
    assert_eq!(tree_of(kept.get_ref()), "/$/inet/127.0.0.1/2 | /$/inet/127.0.0.1/1");
    namer.stop().await;
}

#[tokio::test]
async fn a_slow_reader_gets_the_latest_state_not_every_state() {
    let namer = common::start("{}").await;
    put(&namer, "default", &wide_dtab(1000)).await;
    // HTTP/2's smallest default windows, so that the client stops the namer from sending soon.
    let channel = Channel::from_shared(format!("http://{}", namer.mesh))
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let mut client = InterpreterClient::new(channel);
    let mut stream = client.stream_bound_tree(bind_req("default", "/svc", "")).await.unwrap().into_inner();
    assert!(tree_of(&next(&mut stream).await.unwrap()).contains("/1000 &"));
    // Forty changes, each a tree of several kilobytes, while the client reads nothing.
    const UPDATES: u16 = 40;
    for update in 1..=UPDATES {
        put(&namer, "default", &wide_dtab(1000 + update * 1000)).await;
    }
    let last = format!("/$/inet/127.0.0.1/{} &", 1000 + UPDATES * 1000);
    let mut received = 0;
    loop {
        received += 1;
        if tree_of(&next(&mut stream).await.unwrap()).starts_with(&last) {
            break;
        }
    }
    assert!(received < UPDATES, "intermediate states are skipped: {received} of {UPDATES} arrived");
    namer.stop().await;
}

#[tokio::test]
async fn namerds_request_conventions_are_kept() {
    let namer = common::start("{}").await;
    let mut client = InterpreterClient::new(channel(&namer).await);
    let status = client.get_bound_tree(mesh::BindReq::default()).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::InvalidArgument, "No namespace specified"));
    let two_segments =
        mesh::BindReq { root: Some(mesh::Path::from(&p("/a/b"))), name: Some(mesh::Path::from(&p("/x"))), dtab: None };
    let status = client.get_bound_tree(two_segments).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("Invalid root"), "{status:?}");
    let no_name = mesh::BindReq { root: Some(mesh::Path::from(&p("/default"))), name: None, dtab: None };
    let status = client.get_bound_tree(no_name).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::NotFound, "No name given"));

    let mut resolver = ResolverClient::new(channel(&namer).await);
    let answer = resolver.get_replicas(mesh::ReplicasReq::default()).await.unwrap().into_inner();
    assert_eq!(Addr::try_from(&answer).unwrap(), Addr::Failed { cause: "No ID provided".into() });

    let mut delegator = DelegatorClient::new(channel(&namer).await);
    let status = delegator.get_dtab(dtab_req("missing")).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::NotFound, "Root not found"));
    namer.stop().await;
}

#[tokio::test]
async fn replicas_are_resolved_and_streamed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("web"), "127.0.0.1 8080\n10.1.2.3 8081 * 2\n").unwrap();
    let namer = common::start(&format!(
        "namers:\n  - kind: io.l5d.fs\n    root_dir: {}\n    poll_interval_ms: 50\n",
        dir.path().display()
    ))
    .await;
    let mut client = ResolverClient::new(channel(&namer).await);

    let replicas = client.get_replicas(replicas_req(&p("/#/io.l5d.fs/web"))).await.unwrap().into_inner();
    let Some(mesh::replicas::Result::Bound(bound)) = &replicas.result else { panic!("bound: {replicas:?}") };
    assert_eq!(bound.endpoints.len(), 2);
    // IPv4 endpoints carry their address family explicitly, or Linkerd drops them.
    assert!(bound.endpoints.iter().all(|e| e.inet_af == Some(mesh::endpoint::AddressFamily::Inet4 as i32)));
    let Addr::Bound { addrs, .. } = Addr::try_from(&replicas).unwrap() else { panic!("bound") };
    assert_eq!(addrs[1].weight(), 2.0);

    // A transformer prefix is stripped; an unknown name is negative.
    let transformed = client.get_replicas(replicas_req(&p("/%/io.l5d.port/1/#/io.l5d.fs/web"))).await.unwrap();
    assert!(matches!(transformed.get_ref().result, Some(mesh::replicas::Result::Bound(_))));
    let neg = client.get_replicas(replicas_req(&p("/#/io.l5d.fs/nope"))).await.unwrap();
    assert_eq!(Addr::try_from(neg.get_ref()).unwrap(), Addr::Neg);

    let mut stream = client.stream_replicas(replicas_req(&p("/#/io.l5d.fs/web"))).await.unwrap().into_inner();
    let first = Addr::try_from(&next(&mut stream).await.unwrap()).unwrap();
    assert!(matches!(first, Addr::Bound { ref addrs, .. } if addrs.len() == 2), "{first:?}");
    std::fs::write(dir.path().join("web"), "127.0.0.1 9090\n").unwrap();
    loop {
        let addr = Addr::try_from(&next(&mut stream).await.unwrap()).unwrap();
        if addr == Addr::bound(["127.0.0.1:9090".parse().unwrap()]) {
            break;
        }
    }
    std::fs::remove_file(dir.path().join("web")).unwrap();
    loop {
        if Addr::try_from(&next(&mut stream).await.unwrap()).unwrap() == Addr::Neg {
            break;
        }
    }
    namer.stop().await;
}

#[tokio::test]
async fn dtabs_and_delegations_through_the_delegator() {
    let namer = common::start("{}").await;
    put(&namer, "default", "/svc=>/$/inet/127.0.0.1/1").await;
    let mut client = DelegatorClient::new(channel(&namer).await);

    let got = VersionedDtab::try_from(&client.get_dtab(dtab_req("default")).await.unwrap().into_inner()).unwrap();
    assert_eq!(got.dtab, d("/svc=>/$/inet/127.0.0.1/1"));
    assert_eq!(got.version, 1u64.to_be_bytes(), "raw store version bytes, not base64");

    let mut stream = client.stream_dtab(dtab_req("default")).await.unwrap().into_inner();
    let first = VersionedDtab::try_from(&next(&mut stream).await.unwrap()).unwrap();
    assert_eq!(first.dtab, d("/svc=>/$/inet/127.0.0.1/1"));
    put(&namer, "default", "/svc=>/$/inet/127.0.0.1/2").await;
    let second = VersionedDtab::try_from(&next(&mut stream).await.unwrap()).unwrap();
    assert_eq!(
        (second.dtab.to_string(), second.version),
        ("/svc=>/$/inet/127.0.0.1/2".to_string(), 2u64.to_be_bytes().to_vec())
    );
    reqwest::Client::new().delete(namer.url("/api/1/dtabs/default")).send().await.unwrap();
    assert_eq!(next(&mut stream).await.unwrap_err().code(), Code::NotFound);

    put(&namer, "default", "/svc=>/a | /$/inet/127.0.0.1/1;/a=>/$/no.such.Namer").await;
    let request =
        DelegateTreeRequest { namespace: "default".into(), tree: NameTree::Leaf(p("/svc/x")), dtab: Dtab::empty() };
    let rsp = client.get_delegate_tree(mesh::DelegateTreeReq::from(&request)).await.unwrap().into_inner();
    let encoded = rsp.tree.as_ref().unwrap();
    assert!(encoded.dentry.is_some() && encoded.path.is_some(), "the root carries a path and the no-op dentry");
    let tree = DelegateTree::try_from(&rsp).unwrap();
    assert_eq!(tree.path, p("/svc/x"));
    let names: Vec<String> = tree.bound_names().iter().map(|b| b.id().to_string()).collect();
    assert_eq!(names, ["/$/inet/127.0.0.1/1"]);

    let mut once = client.stream_delegate_tree(mesh::DelegateTreeReq::from(&request)).await.unwrap().into_inner();
    assert!(next(&mut once).await.is_ok());
    assert!(tokio::time::timeout(Duration::from_secs(5), once.message()).await.unwrap().unwrap().is_none());

    let no_tree = mesh::DelegateTreeReq { root: Some(mesh::Path::from(&p("/default"))), tree: None, dtab: None };
    assert_eq!(client.get_delegate_tree(no_tree).await.unwrap_err().code(), Code::NotFound);
    namer.stop().await;
}

#[tokio::test]
async fn the_codec_reads_and_shows_canonical_text() {
    let namer = common::start("{}").await;
    let mut client = CodecClient::new(channel(&namer).await);
    let read =
        client.read_dtab(mesh::ReadDtabReq { text: "/a => 2 * /b & /c ; # c".into() }).await.unwrap().into_inner();
    let dtab = Dtab::try_from(read.dtab.as_ref().unwrap()).unwrap();
    let shown = client.show_dtab(mesh::ShowDtabReq { dtab: Some(mesh::Dtab::from(&dtab)) }).await.unwrap().into_inner();
    assert_eq!(shown.text, "/a=>2.00*/b & /c");
    let bad = client.read_dtab(mesh::ReadDtabReq { text: "/a => ".into() }).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("line 1, column 7"), "{bad:?}");

    let path = client.read_path(mesh::ReadPathReq { text: "/a/\\x2f".into() }).await.unwrap().into_inner();
    let shown = client.show_path(mesh::ShowPathReq { path: path.path }).await.unwrap().into_inner();
    assert_eq!(shown.text, "/a/\\x2f");
    let empty = client.read_path(mesh::ReadPathReq { text: String::new() }).await.unwrap().into_inner();
    assert_eq!(Path::try_from(empty.path.as_ref().unwrap()).unwrap(), Path::empty());
    assert_eq!(
        client.read_path(mesh::ReadPathReq { text: "a".into() }).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    namer.stop().await;
}

/// Linkerd 1's gRPC client sends `:scheme http`, an empty `:authority`, `content-type:
/// application/grpc+proto` and no `te` header. This request is written as raw HTTP/2 frames,
/// so that nothing between the test and the server can tidy it up.
#[tokio::test]
async fn a_request_shaped_like_linkerd_1s_is_answered() {
    let namer = common::start("{}").await;
    let request = mesh::ShowPathReq { path: Some(mesh::Path::from(&p("/linkerd/one"))) };
    let answer = raw_h2::unary(
        namer.mesh,
        &[
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", ""),
            (":path", "/io.linkerd.mesh.Codec/ShowPath"),
            ("content-type", "application/grpc+proto"),
        ],
        &request,
    )
    .await;
    let shown: mesh::ShowPathRsp = answer.expect("the server answers instead of resetting the stream");
    assert_eq!(shown.text, "/linkerd/one");
    namer.stop().await;
}

/// Just enough HTTP/2 to send one request with arbitrary pseudo-headers and read its answer.
mod raw_h2 {
    use std::net::SocketAddr;
    use std::time::Duration;

    use prost::Message;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const HEADERS: u8 = 0x1;
    const DATA: u8 = 0x0;
    const SETTINGS: u8 = 0x4;
    const RST_STREAM: u8 = 0x3;
    const GOAWAY: u8 = 0x7;
    const END_STREAM: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;
    const ACK: u8 = 0x1;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// HPACK "literal header field without indexing, new name", no Huffman coding.
    fn literal(name: &str, value: &str) -> Vec<u8> {
        let mut out = vec![0x00];
        for text in [name, value] {
            assert!(text.len() < 127, "short strings only");
            out.push(text.len() as u8);
            out.extend_from_slice(text.as_bytes());
        }
        out
    }

    /// Sends one unary gRPC call; `Err` carries what the server did instead of answering.
    pub(super) async fn unary<Req: Message, Rsp: Message + Default>(
        addr: SocketAddr,
        headers: &[(&str, &str)],
        request: &Req,
    ) -> Result<Rsp, String> {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(frame(SETTINGS, 0, 0, &[]));
        let block: Vec<u8> = headers.iter().flat_map(|(n, v)| literal(n, v)).collect();
        out.extend(frame(HEADERS, END_HEADERS, 1, &block));
        let message = request.encode_to_vec();
        let mut grpc = vec![0u8];
        grpc.extend_from_slice(&(message.len() as u32).to_be_bytes());
        grpc.extend_from_slice(&message);
        out.extend(frame(DATA, END_STREAM, 1, &grpc));
        tcp.write_all(&out).await.unwrap();

        let mut body = Vec::new();
        let read = async {
            loop {
                let mut head = [0u8; 9];
                tcp.read_exact(&mut head).await.map_err(|e| format!("connection closed: {e}"))?;
                let len = (head[0] as usize) << 16 | (head[1] as usize) << 8 | head[2] as usize;
                let (kind, flags) = (head[3], head[4]);
                let stream = u32::from_be_bytes([head[5] & 0x7f, head[6], head[7], head[8]]);
                let mut payload = vec![0u8; len];
                tcp.read_exact(&mut payload).await.map_err(|e| format!("connection closed: {e}"))?;
                match kind {
                    SETTINGS if flags & ACK == 0 => tcp.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap(),
                    RST_STREAM if stream == 1 => return Err(format!("stream reset, error code {payload:?}")),
                    GOAWAY => return Err(format!("connection closed by GOAWAY {payload:?}")),
                    DATA if stream == 1 => body.extend_from_slice(&payload),
                    // The trailers end the stream.
                    HEADERS if stream == 1 && flags & END_STREAM != 0 => return Ok(()),
                    _ => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read).await.map_err(|_| "no answer in time".to_string())??;
        if body.len() < 5 {
            return Err(format!("no gRPC message in the answer ({} bytes)", body.len()));
        }
        Rsp::decode(&body[5..]).map_err(|e| e.to_string())
    }
}
