//! A router process out of file descriptors: it keeps accepting without spinning, makes room
//! by closing idle connections, and serves normal traffic again as soon as it can. Its own
//! test binary, since it runs the router under a small open-file limit.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::WAYMARK;
use support::mesh::{Process, free_port, wait_listening};

/// The router's open-file limit: enough to start, small enough to run out of.
const OPEN_FILES: u32 = 64;

/// Sends `GET /` for `host` on a new connection and returns the status (0 when the connection
/// ended without a response).
fn get(addr: SocketAddr, host: &str) -> u16 {
    let mut conn = TcpStream::connect(addr).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(conn, "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    let _ = conn.read_to_string(&mut response);
    response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// The CPU time `pid` has used, from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at ") ".
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let per_sec: u64 = String::from_utf8(Command::new("getconf").arg("CLK_TCK").output().unwrap().stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    Duration::from_millis(ticks * 1000 / per_sec)
}

#[test]
fn out_of_file_descriptors_the_router_sheds_idle_connections_and_never_spins() {
    let dir = tempfile::tempdir().unwrap();
    let web_port = free_port();
    let mut web = Process::spawn(
        "web",
        Command::new(WAYMARK)
            .args(["demo-service", "--name", "web", "--version", "v1", "--listen"])
            .arg(format!("127.0.0.1:{web_port}"))
            .stdout(Stdio::null()),
    );
    wait_listening(&mut web, ([127, 0, 0, 1], web_port).into());
    // An upstream that accepts and never answers: requests to it stay in flight. HTTP/2
    // requests are named by their authority, the router's address here.
    let hole = TcpListener::bind("127.0.0.1:0").unwrap();
    let hole_port = hole.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in hole.incoming().flatten() {
            held.push(conn);
        }
    });

    let (port, admin) = (free_port(), free_port());
    let config = dir.path().join("router.yaml");
    std::fs::write(
        &config,
        format!(
            "listeners:\n  - port: {port}\nadmin:\n  port: {admin}\nclient:\n  protocol: http1\ninterpreter:\n  kind: standalone\n  \
             dtab: /svc/web => /$/inet/127.0.0.1/{web_port}; /svc/127.0.0.1 => /$/inet/127.0.0.1/{hole_port}\n"
        ),
    )
    .unwrap();
    let mut router = Process::spawn(
        "router",
        Command::new("bash")
            .arg("-c")
            .arg(format!("ulimit -n {OPEN_FILES} && exec \"$0\" router --log error --config \"$1\""))
            .arg(WAYMARK)
            .arg(&config),
    );
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_listening(&mut router, addr);
    let pid = router.pid().unwrap();
    assert_eq!(get(addr, "web"), 200);

    // Far more idle connections than the router has descriptors for...
    let idle: Vec<TcpStream> = (0..3 * OPEN_FILES).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // ...and normal traffic still gets through: idle connections make room.
    for i in 0..5 {
        assert_eq!(get(addr, "web"), 200, "request {i} while flooded with idle connections");
    }
    drop(idle);

    // Now fill the router with requests that stay in flight: streams of one HTTP/2
    // connection, each holding a connection upstream, until it has no descriptor left.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).http2_only(true).build_http();
    let busy: Vec<_> = (0..2 * OPEN_FILES)
        .map(|_| {
            let request = hyper::Request::get(format!("http://{addr}/")).body(http_body_util::Empty::new());
            runtime.spawn(client.request(request.unwrap()))
        })
        .collect();
    // Wait for the streams to reach the router, then queue one more connection: it cannot
    // be accepted, and no connection is idle to make room for it.
    std::thread::sleep(Duration::from_secs(2));
    let pending = TcpStream::connect(addr).unwrap();
    // Full of busy connections and out of descriptors, with a client waiting: the accept loop
    // must wait, not spin.
    let before = cpu_time(pid);
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_time(pid) - before;
    assert!(used < Duration::from_millis(500), "the router used {used:?} of CPU in 2 s while out of descriptors");

    // Once the busy clients go, the router recovers by itself.
    drop(pending);
    busy.iter().for_each(|stream| stream.abort());
    drop(client);
    drop(runtime);
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(addr, "web") != 200 {
        assert!(Instant::now() < deadline, "the router did not recover");
        std::thread::sleep(Duration::from_millis(100));
    }
}
