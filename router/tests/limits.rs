//! The router's limits against clients that hold connections: silent and half-sent requests,
//! idle connections, the connection cap, on the proxy listeners and the admin port. Real
//! sockets throughout.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// True when the peer closes `stream` within `within` (reading and discarding what it sends).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let read_to_end = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read_to_end).await.is_ok()
}

/// Reads one HTTP/1.1 response head and returns its status line.
async fn status_line(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n =
            tokio::time::timeout(Duration::from_secs(20), stream.read(&mut byte)).await.expect("a response").unwrap();
        assert_eq!(n, 1, "closed before the response head: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    text.lines().next().unwrap_or_default().to_string()
}

async fn metrics_of(admin: SocketAddr) -> String {
    admin_get(admin, "/metrics").await.1
}

const GENEROUS: Duration = Duration::from_secs(20);

#[tokio::test]
async fn silent_and_half_sent_request_heads_are_disconnected() {
    let web = upstream("web").await;
    let resolver = TestResolver::new(&format!("/svc/web => {}", web.id()));
    let router = router(config("listeners:\n  - port: 0\n    header_read_timeout_ms: 300\n"), resolver).await;

    let mut silent = TcpStream::connect(router.addr()).await.unwrap();
    let mut half = TcpStream::connect(router.addr()).await.unwrap();
    half.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
    // A slow client that keeps sending a byte now and then is timed from its first byte.
    let mut dribble = TcpStream::connect(router.addr()).await.unwrap();
    let dribbling = tokio::spawn(async move {
        for b in b"GET / HTTP/1.1\r\nHost: web\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if dribble.write_all(&[*b]).await.is_err() {
                return closed_within(&mut dribble, GENEROUS).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    });
    assert!(closed_within(&mut silent, GENEROUS).await, "a connection that says nothing is closed");
    assert!(closed_within(&mut half, GENEROUS).await, "a half-sent request head is not waited for forever");
    assert!(dribbling.await.unwrap(), "a head sent a byte at a time is cut off");

    // A prompt client on a new connection is served as usual.
    let got = get(&h1(), router.addr(), "web", &[]).await;
    assert_eq!(got.status, 200);
    let text = metrics_of(router.admin).await;
    let closed =
        metric(&text, r#"router_server_closed_connections_total{listener="outbound",reason="header_timeout"}"#);
    assert!(closed.is_some_and(|n| n >= 3.0), "{text}");
}

#[tokio::test]
async fn idle_connections_are_closed_and_slow_requests_are_not() {
    let web = upstream("web").await;
    let resolver = TestResolver::new(&format!("/svc/web => {}", web.id()));
    let router = router(
        config("listeners:\n  - port: 0\n    idle_timeout_ms: 400\n    header_read_timeout_ms: 2000\n"),
        resolver,
    )
    .await;

    // A request slower than the idle timeout is answered: the connection is busy, not idle.
    let mut conn = TcpStream::connect(router.addr()).await.unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nx-delay-ms: 1200\r\n\r\n").await.unwrap();
    assert_eq!(status_line(&mut conn).await, "HTTP/1.1 200 OK");
    // Kept alive afterwards, then closed once idle for long enough.
    assert!(closed_within(&mut conn, GENEROUS).await, "an idle keep-alive connection is closed");

    // HTTP/2 with prior knowledge: the preface and SETTINGS, then nothing.
    let mut h2 = TcpStream::connect(router.addr()).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.unwrap();
    assert!(closed_within(&mut h2, GENEROUS).await, "an HTTP/2 connection without streams is closed too");
    let text = metrics_of(router.admin).await;
    let closed = metric(&text, r#"router_server_closed_connections_total{listener="outbound",reason="idle_timeout"}"#);
    assert!(closed.is_some_and(|n| n >= 2.0), "{text}");
}

#[tokio::test]
async fn at_the_connection_limit_idle_connections_make_room_and_busy_ones_do_not() {
    let web = upstream("web").await;
    let resolver = TestResolver::new(&format!("/svc/web => {}", web.id()));
    let router = router(config("listeners:\n  - port: 0\n    max_connections: 3\n"), resolver).await;
    let addr = router.addr();

    // Three connections that never send anything fill the listener...
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    // ...and a real client still gets through, because one of them makes room.
    let got = get(&h1(), addr, "web", &[]).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let mut closed = 0;
    for conn in &mut idle {
        if closed_within(conn, Duration::from_millis(200)).await {
            closed += 1;
        }
    }
    assert!(closed >= 1, "an idle connection was closed to make room");
    drop(idle);

    // Three busy connections: a fourth is refused rather than served by closing one of them.
    web.delay_ms.store(3000, std::sync::atomic::Ordering::SeqCst);
    let mut busy = Vec::new();
    for _ in 0..3 {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n").await.unwrap();
        busy.push(conn);
    }
    // Wait until the three are in flight upstream.
    for _ in 0..400 {
        if web.hits.load(std::sync::atomic::Ordering::SeqCst) >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut fourth = TcpStream::connect(addr).await.unwrap();
    let _ = fourth.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n").await;
    assert!(closed_within(&mut fourth, GENEROUS).await, "the fourth is closed");
    for conn in &mut busy {
        assert_eq!(status_line(conn).await, "HTTP/1.1 200 OK", "busy connections are not cut");
    }
    let text = metrics_of(router.admin).await;
    let reached = metric(&text, r#"router_server_connection_limit_reached_total{listener="outbound"}"#);
    assert!(reached.is_some_and(|n| n >= 2.0), "{text}");
    let refused = metric(&text, r#"router_server_closed_connections_total{listener="outbound",reason="refused"}"#);
    assert_eq!(refused, Some(1.0), "{text}");
}

#[tokio::test]
async fn the_admin_port_has_the_same_limits() {
    let resolver = TestResolver::new("/svc => /$/inet/127.0.0.1");
    let config =
        config("admin:\n  port: 0\n  header_read_timeout_ms: 300\n  max_connections: 2\nlisteners:\n  - port: 0\n");
    let router = router(config, resolver).await;
    let mut silent = TcpStream::connect(router.admin).await.unwrap();
    let mut half = TcpStream::connect(router.admin).await.unwrap();
    half.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
    // Both slots are taken by clients that say nothing useful; an operator still gets in.
    let (status, body) = admin_get(router.admin, "/live").await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "live\n"));
    assert!(closed_within(&mut silent, GENEROUS).await);
    assert!(closed_within(&mut half, GENEROUS).await);
    let text = metrics_of(router.admin).await;
    assert!(metric(&text, r#"router_server_connection_limit_reached_total{listener="admin"}"#).is_some(), "{text}");
}

#[tokio::test]
async fn a_request_body_that_stops_arriving_is_answered_408_and_a_malformed_one_400() {
    let web = upstream("web").await;
    let resolver = TestResolver::new(&format!("/svc/web => {}", web.id()));
    let router = router(config("listeners:\n  - port: 0\n    request_body_idle_timeout_ms: 300\n"), resolver).await;
    // Small enough to be read whole before it is sent, and large enough to be streamed.
    for length in [100, 100_000] {
        let mut conn = TcpStream::connect(router.addr()).await.unwrap();
        let head = format!("POST / HTTP/1.1\r\nHost: web\r\nContent-Length: {length}\r\n\r\n0123456789");
        conn.write_all(head.as_bytes()).await.unwrap();
        assert_eq!(status_line(&mut conn).await, "HTTP/1.1 408 Request Timeout", "a {length}-byte body");
    }
    let mut conn = TcpStream::connect(router.addr()).await.unwrap();
    conn.write_all(b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(status_line(&mut conn).await, "HTTP/1.1 400 Bad Request", "a malformed chunk is the client's fault");
}

#[tokio::test]
async fn an_endpoint_whose_response_body_stops_arriving_is_cut_off() {
    // An endpoint that sends its headers and five of a hundred bytes, then nothing.
    let stalling = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = stalling.local_addr().unwrap().port();
    let _endpoint = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut conn, _)) = stalling.accept().await {
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf).await;
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello").await;
            held.push(conn);
        }
    });
    let resolver = TestResolver::new(&format!("/svc/web => /$/inet/127.0.0.1/{port}"));
    let router = router(config("client:\n  response_body_idle_timeout_ms: 300\n"), resolver).await;
    let req = http::Request::get(format!("http://{}/", router.addr()))
        .header("host", "web")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(GENEROUS, h1().request(req)).await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let body = tokio::time::timeout(GENEROUS, http_body_util::BodyExt::collect(response.into_body())).await;
    assert!(body.expect("the body ends, one way or another").is_err(), "the client learns the body is incomplete");
}

#[tokio::test]
async fn an_oversized_request_head_gets_431() {
    let resolver = TestResolver::new("/svc => /$/inet/127.0.0.1");
    let router = router(config(""), resolver).await;
    let mut conn = TcpStream::connect(router.addr()).await.unwrap();
    let cookie = "c".repeat(70 * 1024);
    let head = format!("GET / HTTP/1.1\r\nHost: web\r\nCookie: {cookie}\r\n\r\n");
    let _ = conn.write_all(head.as_bytes()).await;
    assert_eq!(status_line(&mut conn).await, "HTTP/1.1 431 Request Header Fields Too Large");
}
