//! `waymark-proxy` as a user runs it: a process with a configuration file, serving until it is
//! told to stop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A free port on loopback, a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn the_proxy_binary_routes_and_stops_on_sigterm() {
    // A backend that answers every request on a connection with "ok" and closes it.
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_port = backend.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in backend.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let config = dir.path().join("proxy.yaml");
    std::fs::write(
        &config,
        format!(
            "listeners:\n  - port: {port}\nadmin:\n  port: {admin}\n\
             interpreter:\n  kind: standalone\n  dtab: /svc => /$/inet/127.0.0.1/{backend_port}\n"
        ),
    )
    .unwrap();
    let mut proxy = Command::new(env!("CARGO_BIN_EXE_waymark-proxy"))
        .args(["--log", "warn", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut conn = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(conn) => break conn,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("the proxy never listened: {e}"),
        }
    };
    conn.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with("ok"), "{answer}");

    Command::new("kill").args(["-TERM", &proxy.id().to_string()]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = proxy.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the proxy did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}
