//! How fast one dtab update reaches many routers, and what holding their streams costs.
//!
//! Starts the real `waymark namer` (in-memory store) as a separate process, opens 1,000
//! `StreamBoundTree` streams for 1,000 different names over 20 HTTP/2 connections, then
//! changes the dtab several times. For each update it measures, per stream, the time from
//! sending the update to receiving the new tree, and reports percentiles over all streams and
//! updates, and the namer's resident memory with the streams open.
//!
//!     cargo bench --bench namer_streams

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tonic::transport::Channel;
use waymark_dtab::{BoundLeaf, NameTree};
use waymark_proto::mesh::{self, interpreter_client::InterpreterClient};
use waymark_proto::request::BindRequest;

const STREAMS: usize = 1_000;
const CONNECTIONS: usize = 20;
const UPDATES: u16 = 10;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn rss_kib(child: &Child) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

struct Namer(Child);

impl Drop for Namer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() {
    let (http, mesh, admin) = (free_port(), free_port(), free_port());
    let config = format!(
        "interfaces:\n  - {{kind: io.l5d.httpController, port: {http}}}\n  - {{kind: io.l5d.mesh, port: {mesh}}}\nadmin: {{port: {admin}}}\nlogging: {{level: warn}}\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("namer.yaml");
    std::fs::write(&config_path, config).unwrap();
    let namer = Namer(
        Command::new(env!("CARGO_BIN_EXE_waymark"))
            .args(["namer", "--config"])
            .arg(&config_path)
            .stdout(Stdio::null())
            .spawn()
            .expect("the namer starts"),
    );
    let client = reqwest::Client::new();
    let put = |port: u16| {
        let client = client.clone();
        async move {
            let dtab = format!("/svc=>/$/inet/127.0.0.1/{port}");
            client
                .put(format!("http://127.0.0.1:{http}/api/1/dtabs/default"))
                .header("content-type", "application/dtab")
                .body(dtab)
                .send()
                .await
        }
    };
    let started = Instant::now();
    while put(1).await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "the namer did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let idle_rss = rss_kib(&namer.0);

    // Each stream reports (update number, arrival time) for every tree it receives.
    let (arrivals, mut arrived) = mpsc::unbounded_channel::<(u16, Instant)>();
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(Channel::from_shared(format!("http://127.0.0.1:{mesh}")).unwrap().connect().await.unwrap());
    }
    for i in 0..STREAMS {
        let mut client = InterpreterClient::new(channels[i % CONNECTIONS].clone());
        let request = BindRequest {
            namespace: "default".into(),
            name: format!("/svc/web-{i}").parse().unwrap(),
            dtab: Default::default(),
        };
        let mut stream = client.stream_bound_tree(mesh::BindReq::from(&request)).await.unwrap().into_inner();
        let arrivals = arrivals.clone();
        tokio::spawn(async move {
            while let Ok(Some(rsp)) = stream.message().await {
                let tree = NameTree::<BoundLeaf>::try_from(&rsp).unwrap();
                let port: u16 = tree.leaves()[0].name.id().labels()[3].as_str().unwrap().parse().unwrap();
                let _ = arrivals.send((port, Instant::now()));
            }
        });
    }
    for _ in 0..STREAMS {
        arrived.recv().await.unwrap();
    }
    let streams_rss = rss_kib(&namer.0);

    let mut latencies = Vec::with_capacity(STREAMS * UPDATES as usize);
    for update in 2..2 + UPDATES {
        let sent = Instant::now();
        put(update).await.unwrap();
        let mut got = 0;
        while got < STREAMS {
            let (port, at) = arrived.recv().await.unwrap();
            if port == update {
                latencies.push(at - sent);
                got += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    latencies.sort();
    println!(
        "namer_streams: {STREAMS} StreamBoundTree streams ({STREAMS} names, {CONNECTIONS} connections), {UPDATES} dtab updates"
    );
    println!(
        "  update -> every stream: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
    );
    println!(
        "  namer RSS: {:.1} MiB idle, {:.1} MiB with the streams open",
        idle_rss as f64 / 1024.0,
        streams_rss as f64 / 1024.0
    );
}
