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

    for (alpn, version) in [(&b"h2"[..], "HTTP/2.0"), (&b"http/1.1"[..], "HTTP/1.1")] {
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
        assert_eq!(json["version"], version, "the endpoint is reached with the version ALPN chose");
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
