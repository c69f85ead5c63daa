//! Requests built to make a proxy and the servers behind it disagree: two Host headers, a
//! target that names another server than its Host, smuggled upgrades and tunnels, headers an
//! edge must not let in, and bytes that must not come back raw. Real sockets throughout.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `request` as raw bytes on a new connection and returns everything read until the
/// router closes it or goes quiet.
async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn two_upstreams() -> (Upstream, Upstream, Router) {
    let (web, evil) = (upstream("web").await, upstream("evil").await);
    let resolver = TestResolver::new(&format!("/svc/web => {}; /svc/evil => {}", web.id(), evil.id()));
    let router = router(config(""), resolver).await;
    (web, evil, router)
}

#[tokio::test]
async fn two_host_headers_are_refused() {
    let (web, _evil, router) = two_upstreams().await;
    let answer = raw(router.addr(), b"GET / HTTP/1.1\r\nHost: web\r\nHost: evil\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains("more than one Host header"), "{answer}");
    assert_eq!(web.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_target_in_absolute_form_is_forwarded_with_the_host_it_was_routed_by() {
    let (_web, evil, router) = two_upstreams().await;
    let answer = raw(router.addr(), b"GET http://evil/a HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.contains(r#""upstream":"evil""#), "routed by the target: {answer}");
    assert!(answer.contains(r#""host":"evil""#), "and forwarded with that name, not Host: web: {answer}");
    assert_eq!(evil.hits.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Over HTTP/2, a Host that disagrees with :authority is malformed.
    let req = Request::get(format!("http://{}/", router.addr())).header("host", "evil").body(Full::new(Bytes::new()));
    let got = send(&h2(), req.unwrap()).await;
    assert_eq!(got.status, StatusCode::BAD_REQUEST, "{}", got.text());
}

#[tokio::test]
async fn an_edge_strips_dtab_local_and_a_trusted_listener_forwards_it() {
    let web = upstream("web").await;
    let resolver = TestResolver::new(&format!("/svc/web => {}", web.id()));
    let yaml = "listeners:\n  - port: 0\n    name: inside\n  - port: 0\n    name: edge\n    trusted: false\n";
    let router = router(config(yaml), resolver).await;
    let inside = get(&h1(), router.addrs[0], "web", &[("dtab-local", "/svc/web=>/x")]).await;
    assert_eq!(inside.seen("dtab-local").as_deref(), Some("/svc/web=>/x"));
    let edge = get(&h1(), router.addrs[1], "web", &[("dtab-local", "/svc/web=>/x")]).await;
    assert_eq!(edge.status, StatusCode::OK);
    assert_eq!(edge.seen("dtab-local"), None, "an edge lets no routing header in");
}

#[tokio::test]
async fn an_h2c_upgrade_is_not_forwarded() {
    let (web, _evil, router) = two_upstreams().await;
    let answer = raw(
        router.addr(),
        b"GET / HTTP/1.1\r\nHost: web\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\n\
          HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "served as a plain request: {answer}");
    assert!(!answer.contains(r#""upgrade""#), "no Upgrade reaches the endpoint: {answer}");
    assert!(!answer.contains("http2-settings"), "{answer}");
    assert_eq!(web.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn connect_is_answered_405() {
    let (web, _evil, router) = two_upstreams().await;
    let answer = raw(router.addr(), b"CONNECT web:443 HTTP/1.1\r\nHost: web:443\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 405 "), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("allow: get"), "{answer}");
    assert_eq!(web.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn no_error_body_hands_back_a_raw_nul() {
    let (_web, _evil, router) = two_upstreams().await;
    for path in
        ["/delegator.json?path=%00", "/delegator.json?path=/svc/web&dtab=/a%00%3D%3E/b", "/delegator.json?path=/a%00b"]
    {
        let (status, body) = admin_get(router.admin, path).await;
        assert!(!body.contains('\0'), "{path}: {status} {body:?}");
    }
    let req = Request::post(format!("http://{}/delegator.json", router.admin))
        .body(Full::new(Bytes::from_static(br#"{"path":"/svc/\u0000","dtab":"/\u0000=>/b"}"#)))
        .unwrap();
    let got = send(&h1(), req).await;
    assert!(!got.body.contains(&0), "{:?}", got.text());
}
