//! Starts a namer in this process on free ports, and reads streamed responses line by line.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::oneshot;
use waymark_namer::{NamerApp, NamerConfig};

pub struct Namer {
    pub http: SocketAddr,
    pub mesh: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

/// A namer from YAML; interface and admin ports are set to 0 (free ports).
pub async fn start(yaml: &str) -> Namer {
    let mut config = NamerConfig::from_yaml(yaml, "test").expect("valid test config");
    for interface in &mut config.interfaces {
        match interface {
            waymark_namer::config::InterfaceConfig::Http { port, .. }
            | waymark_namer::config::InterfaceConfig::Mesh { port, .. } => *port = 0,
        }
    }
    config.admin.port = 0;
    config.admin.shutdown_grace_ms = 2_000;
    let app = NamerApp::build(config, None).await.expect("the namer starts");
    let (http, mesh, admin) = (app.http_addrs()[0], app.mesh_addrs()[0], app.admin_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));
    Namer { http, mesh, admin, stop: Some(stop), task }
}

impl Namer {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// Shuts the namer down and waits until it has stopped.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.expect("the namer stops cleanly");
    }
}

/// Reads a streamed (chunked) response one line at a time, however the chunks fall.
pub struct Lines {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: Vec<u8>,
}

impl Lines {
    pub fn new(response: reqwest::Response) -> Self {
        Lines { body: response.bytes_stream().boxed(), buffer: Vec::new() }
    }

    /// The next line, waiting at most 10 s.
    pub async fn next(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(10), self.next_line())
            .await
            .expect("a line arrives in time")
            .expect("the stream is still open")
    }

    /// True if no line arrives within `wait`.
    pub async fn quiet_for(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.next_line()).await.is_err()
    }

    /// The next line, or `None` when the stream ends.
    pub async fn next_line(&mut self) -> Option<String> {
        loop {
            if let Some(at) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=at).collect();
                return Some(String::from_utf8_lossy(&line[..line.len() - 1]).into_owned());
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buffer.extend_from_slice(&chunk),
                _ => return None,
            }
        }
    }
}
