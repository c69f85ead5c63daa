//! The whole namer, on each persistent store: a dtab update made through the HTTP API reaches
//! an open gRPC `StreamBoundTree` and an open HTTP `watch=true` bind stream. With etcd, the
//! update is made through one namer replica and watched through another.

mod common;

use common::{Lines, Namer};
use serde_json::Value;
use tonic::transport::Channel;
use waymark_dtab::{BoundLeaf, NameTree};
use waymark_proto::mesh::{self, interpreter_client::InterpreterClient};
use waymark_proto::request::BindRequest;
use waymark_test_support::EtcdServer;

async fn put(namer: &Namer, dtab: &str) {
    let response = reqwest::Client::new()
        .put(namer.url("/api/1/dtabs/default"))
        .header("content-type", "application/dtab")
        .body(dtab.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
}

async fn grpc_tree(stream: &mut tonic::Streaming<mesh::BoundTreeRsp>) -> String {
    let rsp =
        tokio::time::timeout(std::time::Duration::from_secs(10), stream.message()).await.unwrap().unwrap().unwrap();
    NameTree::<BoundLeaf>::try_from(&rsp).unwrap().to_string()
}

/// Opens both streams on `watched`, updates the dtab through `writer`, and checks that both
/// streams deliver the new tree.
async fn update_reaches_both_streams(writer: &Namer, watched: &Namer) {
    put(writer, "/svc=>/$/inet/127.0.0.1/1").await;

    let channel = Channel::from_shared(format!("http://{}", watched.mesh)).unwrap().connect().await.unwrap();
    let request =
        BindRequest { namespace: "default".into(), name: "/svc/web".parse().unwrap(), dtab: Default::default() };
    let mut grpc =
        InterpreterClient::new(channel).stream_bound_tree(mesh::BindReq::from(&request)).await.unwrap().into_inner();
    let mut http = Lines::new(
        reqwest::Client::new().get(watched.url("/api/1/bind/default?path=/svc/web&watch=true")).send().await.unwrap(),
    );

    // Until the replica has seen the first write, the name is negative and has no id.
    let http_id = |line: String| {
        let tree = serde_json::from_str::<Value>(&line).unwrap();
        tree["bound"]["id"].as_str().map_or_else(|| format!("({})", tree["type"]), str::to_string)
    };

    // The replica may not have seen the first write yet: wait for it on both streams.
    while grpc_tree(&mut grpc).await != "/$/inet/127.0.0.1/1" {}
    let mut id = http_id(http.next().await);
    while id != "/$/inet/127.0.0.1/1" {
        id = http_id(http.next().await);
    }

    put(writer, "/svc=>/$/inet/127.0.0.1/2").await;
    assert_eq!(grpc_tree(&mut grpc).await, "/$/inet/127.0.0.1/2");
    assert_eq!(http_id(http.next().await), "/$/inet/127.0.0.1/2");
}

#[tokio::test]
async fn a_file_backed_namer_streams_an_update() {
    let dir = tempfile::tempdir().unwrap();
    let namer = common::start(&format!("storage:\n  kind: file\n  dir: {}\n", dir.path().display())).await;
    update_reaches_both_streams(&namer, &namer).await;
    // The dtab is on disk, in canonical text.
    let stored = std::fs::read_to_string(dir.path().join("default.dtab")).unwrap();
    assert_eq!(stored.trim_end(), "/svc=>/$/inet/127.0.0.1/2");
    namer.stop().await;
}

#[tokio::test]
async fn an_update_through_one_etcd_backed_replica_reaches_streams_on_another() {
    let etcd = EtcdServer::start().expect("etcd starts (apt-get install etcd-server)");
    let config = format!("storage:\n  kind: etcd\n  endpoints: [\"{}\"]\n", etcd.endpoint());
    let writer = common::start(&config).await;
    let watched = common::start(&config).await;
    update_reaches_both_streams(&writer, &watched).await;
    writer.stop().await;
    watched.stop().await;
}
