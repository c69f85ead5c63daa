//! The protocol towards an endpoint is the endpoint's, whatever the client speaks: HTTP/1.1
//! unless the endpoint is known to speak HTTP/2 (gRPC, its `appProtocol` address metadata, or
//! `client.destinations`), with the router translating both ways, trailers included where
//! HTTP/1.1 allows them; and upgrades (WebSocket) end to end over HTTP/1.1. Real sockets.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use waymark_dtab::Addr;

/// An address set of one address with `appProtocol` metadata.
fn with_app_protocol(addr: std::net::SocketAddr, protocol: &str) -> Addr {
    let mut address = waymark_dtab::Address::from(addr);
    address.meta.insert(waymark_dtab::APP_PROTOCOL_KEY.to_string(), protocol.into());
    Addr::Bound { addrs: vec![address], meta: Default::default() }
}

#[tokio::test]
async fn an_http2_client_in_front_of_an_http1_only_backend() {
    let web = upstream_speaking("web", Speaks::Http1).await;
    // HTTP/2 clients send :authority, which the router names the request by.
    let resolver = TestResolver::new(&format!("/svc/127.0.0.1 => {}", web.id()));
    let router = router(config(""), resolver).await;
    let req = Request::post(format!("http://{}/x", router.addr())).body(Full::new(Bytes::from_static(b"hello")));
    let got = send(&h2(), req.unwrap()).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert_eq!(got.json()["version"], "HTTP/1.1", "the backend got HTTP/1.1");
    assert_eq!(got.json()["body_len"], 5);
    assert_eq!(got.seen("host").as_deref(), Some(router.addr().to_string().as_str()), "Host from :authority");
    // And its response trailers reach the HTTP/2 client.
    let req = Request::get(format!("http://{}/x", router.addr()))
        .header("x-respond-trailer", "x-checksum=abc")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = h2().request(req).await.unwrap();
    let collected = response.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().and_then(|t| t.get("x-checksum")).map(|v| v.to_str().unwrap()), Some("abc"));
}

#[tokio::test]
async fn an_http1_client_in_front_of_an_http2_only_backend_known_by_its_address_metadata() {
    let grpcish = upstream_speaking("h2only", Speaks::Http2).await;
    let resolver = TestResolver::new("/svc => /$/nil");
    resolver.set_tree("/svc/web", "/#/disco/web");
    resolver.set_addr("/#/disco/web", with_app_protocol(grpcish.addr, "kubernetes.io/h2c"));
    let router = router(config(""), resolver.clone()).await;
    let got = get(&h1(), router.addr(), "web", &[]).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert_eq!(got.json()["version"], "HTTP/2.0");
    assert_eq!(got.seen("host").as_deref(), Some("web"));

    // Response trailers cross to an HTTP/1.1 client that asked for them (TE: trailers) when
    // the backend declares them, as HTTP/1.1 requires.
    let mut conn = TcpStream::connect(router.addr()).await.unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nTE: trailers\r\nx-respond-trailer: x-checksum=abc\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(20), conn.read_to_string(&mut answer)).await.unwrap().unwrap();
    assert!(answer.contains("transfer-encoding: chunked"), "{answer}");
    assert!(answer.ends_with("0\r\nx-checksum: abc\r\n\r\n"), "{answer}");

    // Without the metadata the endpoint is spoken to in HTTP/1.1, which it does not speak.
    resolver.set_addr("/#/disco/web", Addr::bound([grpcish.addr]));
    let got = get(&h1(), router.addr(), "web", &[]).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{}", got.text());
}

#[tokio::test]
async fn an_http1_client_in_front_of_an_http2_only_backend_known_by_configuration() {
    let grpcish = upstream_speaking("h2only", Speaks::Http2).await;
    let resolver = TestResolver::new(&format!("/svc/web => {}", grpcish.id()));
    let yaml =
        format!("client:\n  destinations:\n    - prefix: /$/inet/*/{}\n      protocol: http2\n", grpcish.addr.port());
    let router = router(config(&yaml), resolver).await;
    let req = Request::post(format!("http://{}/", router.addr()))
        .header("host", "web")
        .body(Full::new(Bytes::from(vec![b'x'; 100_000])))
        .unwrap();
    let got = send(&h1(), req).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert_eq!(got.json()["version"], "HTTP/2.0");
    assert_eq!(got.json()["body_len"], 100_000);
}

#[tokio::test]
async fn request_trailers_cross_to_http2_and_to_http1_when_declared() {
    let (h1_only, h2_only) =
        (upstream_speaking("h1", Speaks::Http1).await, upstream_speaking("h2", Speaks::Http2).await);
    let resolver = TestResolver::new(&format!("/svc/one => {}", h1_only.id()));
    resolver.set_tree("/svc/two", "/#/two");
    resolver.set_addr("/#/two", with_app_protocol(h2_only.addr, "h2c"));
    let router = router(config(""), resolver).await;
    for (host, version) in [("one", "HTTP/1.1"), ("two", "HTTP/2.0")] {
        let mut conn = TcpStream::connect(router.addr()).await.unwrap();
        let request = format!(
            "POST / HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\nConnection: close\r\n\r\n\
             5\r\nhello\r\n0\r\nx-sum: 42\r\n\r\n"
        );
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(20), conn.read_to_string(&mut answer)).await.unwrap().unwrap();
        assert!(answer.contains(&format!(r#""version":"{version}""#)), "{answer}");
        assert!(answer.contains(r#""trailers":{"x-sum":"42"}"#), "{host}: {answer}");
    }
}

#[tokio::test]
async fn grpc_goes_over_http2_whatever_the_endpoint_is_said_to_speak() {
    let h2_only = upstream_speaking("h2", Speaks::Http2).await;
    let resolver = TestResolver::new("/svc => /$/nil");
    resolver.set_tree("/svc/web", "/#/web");
    // Metadata that says HTTP/1.1: a gRPC call still needs HTTP/2.
    resolver.set_addr("/#/web", with_app_protocol(h2_only.addr, "http"));
    let router = router(config(""), resolver).await;
    let req = Request::post(format!("http://{}/pkg.Service/Method", router.addr()))
        .header("host", "web")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap();
    let got = send(&h1(), req).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert_eq!(got.json()["version"], "HTTP/2.0");
}

/// Opens a WebSocket to `host` through the router at `addr`, sends one text frame and reads
/// the echo back.
async fn websocket_echo(addr: std::net::SocketAddr, host: &str) -> Result<String, String> {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let handshake = format!(
        "GET /chat HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {WEBSOCKET_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    conn.write_all(handshake.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(20), conn.read(&mut byte)).await.unwrap().unwrap();
        if n == 0 {
            return Err(String::from_utf8_lossy(&head).into_owned());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    if !head.starts_with("http/1.1 101") || !head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=") {
        return Err(head);
    }
    // A masked text frame, as clients send them.
    let (mask, text) = ([1u8, 2, 3, 4], b"hello, mesh");
    let mut frame = vec![0x81, 0x80 | text.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(text.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    conn.write_all(&frame).await.unwrap();
    let mut echo = vec![0u8; 2 + text.len()];
    tokio::time::timeout(Duration::from_secs(20), conn.read_exact(&mut echo)).await.unwrap().unwrap();
    assert_eq!(&echo[..2], &[0x81, text.len() as u8]);
    Ok(String::from_utf8_lossy(&echo[2..]).into_owned())
}

#[tokio::test]
async fn websockets_work_end_to_end_over_http1_whatever_the_endpoint_otherwise_speaks() {
    let web = upstream("web").await;
    let resolver = TestResolver::new("/svc => /$/nil");
    resolver.set_tree("/svc/web", "/#/web");
    // Known as an HTTP/2 endpoint: plain requests go to it in HTTP/2, an upgrade in HTTP/1.1.
    resolver.set_addr("/#/web", with_app_protocol(web.addr, "kubernetes.io/h2c"));
    let inner = router(config(""), resolver).await;
    assert_eq!(get(&h1(), inner.addr(), "web", &[]).await.json()["version"], "HTTP/2.0");
    assert_eq!(websocket_echo(inner.addr(), "web").await.as_deref(), Ok("hello, mesh"));
    // Through two routers, as between two meshed services.
    let outer =
        router(config(""), TestResolver::new(&format!("/svc/web => /$/inet/127.0.0.1/{}", inner.addr().port()))).await;
    assert_eq!(websocket_echo(outer.addr(), "web").await.as_deref(), Ok("hello, mesh"));
}
