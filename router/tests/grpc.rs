//! gRPC through the router: a real tonic service (grpc.health.v1), unary and streaming calls,
//! statuses carried in trailers.

mod support;

use std::net::SocketAddr;

use support::*;
use tonic::transport::{Channel, Endpoint};
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus as Wire;
use tonic_health::pb::health_client::HealthClient;

async fn grpc_upstream() -> (SocketAddr, tonic_health::server::HealthReporter, tokio::task::JoinHandle<()>) {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_service_status("echo", ServingStatus::Serving).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (addr, reporter, task)
}

async fn client(router: SocketAddr) -> HealthClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{router}")).unwrap().connect().await.unwrap();
    HealthClient::new(channel)
}

#[tokio::test]
async fn unary_and_streaming_calls_and_their_statuses_pass_through() {
    let (upstream, reporter, _server) = grpc_upstream().await;
    // Named by the gRPC service, whatever the authority.
    let dtab = format!("/svc/grpc.health.v1.Health => /$/inet/127.0.0.1/{}", upstream.port());
    let cfg = config("identifier:\n  - kind: grpc\n  - kind: host\n");
    let router = router(cfg, TestResolver::new(&dtab)).await;
    let mut health = client(router.addr()).await;

    let ok = health.check(HealthCheckRequest { service: "echo".into() }).await.unwrap();
    assert_eq!(ok.get_ref().status, Wire::Serving as i32);
    // The router's verdict rides in the trailers, where the call's status is.
    assert_eq!(ok.metadata().get("l5d-success-class").map(|v| v.to_str().unwrap()), Some("1.0"));

    // An error status travels back in the trailers (grpc-status 5, NOT_FOUND).
    let missing = health.check(HealthCheckRequest { service: "nope".into() }).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
    assert!(missing.metadata().get("l5d-err").is_none(), "the error is the service's, not the router's");
    assert_eq!(missing.metadata().get("l5d-success-class").map(|v| v.to_str().unwrap()), Some("0.0"));
    // Metrics classify calls by the grpc-status trailer: one success, one failure so far.
    let (_, metrics) = admin_get(router.admin, "/metrics").await;
    let line = |class: &str| {
        format!(
            r#"router_service_responses_total{{service="/svc/grpc.health.v1.Health",status_class="2xx",classification="{class}"}}"#
        )
    };
    assert_eq!(metric(&metrics, &line("success")), Some(1.0), "{metrics}");
    assert_eq!(metric(&metrics, &line("failure")), Some(1.0), "{metrics}");

    // A server stream: the first state, then a change pushed while the call is open.
    let mut watch = health.watch(HealthCheckRequest { service: "echo".into() }).await.unwrap().into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status, Wire::Serving as i32);
    reporter.set_service_status("echo", ServingStatus::NotServing).await;
    assert_eq!(watch.message().await.unwrap().unwrap().status, Wire::NotServing as i32);

    // Many concurrent calls multiplex over one client connection.
    let calls = (0..50).map(|_| {
        let mut h = health.clone();
        tokio::spawn(
            async move { h.check(HealthCheckRequest { service: "".into() }).await.map(|r| r.into_inner().status) },
        )
    });
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap(), Wire::Serving as i32);
    }
}

#[tokio::test]
async fn router_errors_reach_grpc_clients_as_statuses() {
    let router = router(config("identifier:\n  - kind: grpc\n"), TestResolver::new("/svc => /$/nil")).await;
    let mut health = client(router.addr()).await;
    let failed = health.check(HealthCheckRequest { service: "".into() }).await.unwrap_err();
    // The router answers gRPC calls with a gRPC status, and still says it was the router.
    assert_eq!(failed.code(), tonic::Code::Unavailable, "{failed:?}");
    assert!(failed.message().contains("no endpoints available for /svc/grpc.health.v1.Health"), "{failed:?}");
    assert!(failed.metadata().get("l5d-err").is_some());
}

#[tokio::test]
async fn an_untrusted_listener_lets_no_l5d_field_out_in_trailers_either() {
    let (upstream, _reporter, _server) = grpc_upstream().await;
    let dtab = format!("/svc/grpc.health.v1.Health => /$/inet/127.0.0.1/{}", upstream.port());
    let cfg = config("identifier:\n  - kind: grpc\nlisteners:\n  - port: 0\n    trusted: false\n");
    let router = router(cfg, TestResolver::new(&dtab)).await;
    let mut health = client(router.addr()).await;
    let ok = health.check(HealthCheckRequest { service: "echo".into() }).await.unwrap();
    assert_eq!(ok.get_ref().status, Wire::Serving as i32);
    let l5d: Vec<_> = ok
        .metadata()
        .keys()
        .filter_map(|key| match key {
            tonic::metadata::KeyRef::Ascii(key) if key.as_str().starts_with("l5d-") => Some(key.to_string()),
            _ => None,
        })
        .collect();
    // A trusted listener sends l5d-success-class in these trailers (see above); this one not.
    assert_eq!(l5d, Vec::<String>::new(), "{:?}", ok.metadata());
}
