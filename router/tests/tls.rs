//! TLS listeners: HTTP/2 chosen through ALPN, HTTP/1.1 otherwise.

mod support;

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use support::*;

fn client_config(cert: &rcgen::Certificate, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

#[tokio::test]
async fn alpn_h2_and_http1_over_tls() {
    let web = upstream("web").await;
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).unwrap();
    let cfg = config(&format!(
        "listeners:\n  - port: 0\n    tls:\n      cert_path: {}\n      key_path: {}\n",
        cert_path.display(),
        key_path.display()
    ));
    let router = router(cfg, TestResolver::new(&format!("/svc/web => {}", web.id()))).await;

    for alpn in [&b"h2"[..], &b"http/1.1"[..]] {
        let tcp = tokio::net::TcpStream::connect(router.addr()).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(client_config(&certified.cert, alpn));
        let tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
        let io = TokioIo::new(tls);
        let response = if alpn == b"h2" {
            let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
            tokio::spawn(conn);
            let req = Request::get("https://web/").body(Full::new(Bytes::new())).unwrap();
            send.send_request(req).await.unwrap()
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            let req = Request::get("/").header("host", "web").body(Full::new(Bytes::new())).unwrap();
            send.send_request(req).await.unwrap()
        };
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["upstream"], "web");
        assert_eq!(json["version"], "HTTP/1.1", "the endpoint is reached in its own protocol, whatever ALPN chose");
    }
}

#[tokio::test]
async fn a_bad_certificate_is_a_start_up_error() {
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    std::fs::write(&cert_path, "not a certificate").unwrap();
    let cfg = config(&format!(
        "listeners:\n  - port: 0\n    tls:\n      cert_path: {}\n      key_path: {}\n",
        cert_path.display(),
        cert_path.display()
    ));
    let err = waymark_router::App::with_naming(cfg, waymark_router::Naming::from_resolver(TestResolver::new(""), None))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cert.pem"), "{err}");
}

#[tokio::test]
async fn two_routers_talk_mutual_tls_and_a_router_without_a_certificate_is_refused() {
    let web = upstream("web").await;
    let dir = tempfile::tempdir().unwrap();
    let mesh_ca = waymark_test_support::TestCa::new("mesh").unwrap();
    let ca = mesh_ca.write_pem(dir.path(), "ca");
    let router_cert = |who: &str| mesh_ca.issue(&["router.mesh"]).unwrap().write_pem(dir.path(), who);

    // The inbound router: TLS, and only clients with a certificate from the mesh CA.
    let (cert, key) = router_cert("inbound");
    let inbound_cfg = config(&format!(
        "listeners:\n  - port: 0\n    tls: {{cert_path: {cert}, key_path: {key}, client_ca_path: {ca}}}\n"
    ));
    // HTTP/2 clients are named by their authority, here 127.0.0.1.
    let to_web = format!("/svc/web => {web}; /svc/127.0.0.1 => {web}", web = web.id());
    let inbound = router(inbound_cfg, TestResolver::new(&to_web)).await;
    let to_inbound = format!("/svc => /$/inet/127.0.0.1/{}", inbound.addr().port());

    // The outbound router: sends to the inbound one over TLS with its own certificate.
    let (cert, key) = router_cert("outbound");
    let outbound_cfg = config(&format!(
        "client:\n  tls: {{ca_path: {ca}, server_name: router.mesh, cert_path: {cert}, key_path: {key}}}\n"
    ));
    let outbound = router(outbound_cfg, TestResolver::new(&to_inbound)).await;
    let got = get(&h1(), outbound.addr(), "web", &[]).await;
    assert_eq!((got.status, got.upstream()), (StatusCode::OK, "web".to_string()), "{}", got.text());
    assert_eq!(got.json()["version"], "HTTP/1.1");
    // Between the routers, ALPN chose HTTP/2 (the inbound router says so in Via).
    assert_eq!(got.seen("via").as_deref(), Some("1.1 waymark, 2 waymark"));
    let req = Request::get(format!("http://{}/", outbound.addr())).body(Full::new(Bytes::new()));
    let got = send(&h2(), req.unwrap()).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert_eq!(got.seen("via").as_deref(), Some("2 waymark, 2 waymark"));

    // A router that trusts the inbound one but has no certificate of its own gets nowhere.
    let anonymous_cfg = config(&format!("client:\n  tls: {{ca_path: {ca}, server_name: router.mesh}}\n"));
    let anonymous = router(anonymous_cfg, TestResolver::new(&to_inbound)).await;
    let refused = get(&h1(), anonymous.addr(), "web", &[]).await;
    assert_eq!(refused.status, StatusCode::BAD_GATEWAY, "{}", refused.text());
    // Nor does one that expects another name on the certificate.
    let wrong_name_cfg = config(&format!(
        "client:\n  tls: {{ca_path: {ca}, server_name: other.mesh, cert_path: {cert}, key_path: {key}}}\n"
    ));
    let wrong_name = router(wrong_name_cfg, TestResolver::new(&to_inbound)).await;
    let refused = get(&h1(), wrong_name.addr(), "web", &[]).await;
    assert_eq!(refused.status, StatusCode::BAD_GATEWAY);
    assert!(refused.text().contains("certificate"), "{}", refused.text());
    assert_eq!(web.hits.load(std::sync::atomic::Ordering::SeqCst), 2, "only the two mutual-TLS requests arrived");
}

#[tokio::test]
async fn a_silent_tls_client_holds_up_nobody_and_is_let_go() {
    let web = upstream("web").await;
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).unwrap();
    let cfg = config(&format!(
        "listeners:\n  - port: 0\n    tls:\n      cert_path: {}\n      key_path: {}\n",
        cert_path.display(),
        key_path.display()
    ));
    let router = router(cfg, TestResolver::new(&format!("/svc/web => {}", web.id()))).await;
    // Clients that connect and never start the handshake...
    let mut silent: Vec<_> = Vec::new();
    for _ in 0..50 {
        silent.push(tokio::net::TcpStream::connect(router.addr()).await.unwrap());
    }
    // ...do not stand in the way of one that does.
    let tcp = tokio::net::TcpStream::connect(router.addr()).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_config(&certified.cert, b"http/1.1"));
    let tls = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        connector.connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .expect("the handshake is not queued behind the silent clients")
    .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::get("/").header("host", "web").body(Full::new(Bytes::new())).unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), StatusCode::OK);
    // The silent ones are let go once the handshake timeout passes.
    let mut buf = [0u8; 16];
    for conn in &mut silent {
        let read = tokio::time::timeout(
            waymark_tls::HANDSHAKE_TIMEOUT + std::time::Duration::from_secs(20),
            tokio::io::AsyncReadExt::read(conn, &mut buf),
        )
        .await
        .expect("closed by the router");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
}
