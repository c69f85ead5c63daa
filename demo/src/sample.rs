//! A sample service for the demo and the end-to-end tests: it answers with its name and
//! version, and, when it has a downstream, first calls that downstream through the router, the
//! way a meshed application does.
//!
//! Like every application in a dtab-routed mesh, it copies the `l5d-ctx-*` headers of the
//! request it serves onto the requests it makes, so that a per-request override follows the
//! request through every hop. Its answer is one line:
//!
//! ```text
//! web v2 -> greeter v1 [l5d-ctx-dtab: /svc/web=>/svc/web-v2]
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tracing::debug;

/// What a sample service is and whom it calls.
#[derive(Debug, Clone)]
pub struct SampleService {
    /// Its name, such as `web`.
    pub name: String,
    /// Its version, such as `v1`.
    pub version: String,
    /// The service it calls on every request (by `Host`, through `router`), if any.
    pub downstream: Option<String>,
    /// The router's outbound address.
    pub router: SocketAddr,
}

/// The header a sample service reports its own identity in.
pub const SERVED_BY: &str = "x-served-by";

impl SampleService {
    /// Serves on `listener` until the process ends.
    pub async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
        let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        loop {
            let (stream, _) = listener.accept().await?;
            let service = self.clone();
            let client = client.clone();
            tokio::spawn(async move {
                let handle = service_fn(move |request| {
                    let service = service.clone();
                    let client = client.clone();
                    async move { Ok::<_, Infallible>(service.answer(request, &client).await) }
                });
                let connection =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), handle);
                if let Err(error) = connection.await {
                    debug!(%error, "connection ended");
                }
            });
        }
    }

    fn identity(&self) -> String {
        format!("{} {}", self.name, self.version)
    }

    async fn answer(
        &self,
        request: Request<Incoming>,
        client: &Client<HttpConnector, Full<Bytes>>,
    ) -> Response<Full<Bytes>> {
        let context: Vec<(header::HeaderName, HeaderValue)> = request
            .headers()
            .iter()
            .filter(|(name, _)| name.as_str().starts_with("l5d-ctx-"))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        let mut line = self.identity();
        let mut status = StatusCode::OK;
        if let Some(downstream) = &self.downstream {
            match self.call(downstream, &context, client).await {
                Ok(answer) => line = format!("{line} -> {answer}"),
                Err(why) => {
                    status = StatusCode::BAD_GATEWAY;
                    line = format!("{line} -> {downstream} failed: {why}");
                }
            }
        } else if let Some((_, dtab)) = context.iter().find(|(name, _)| name == "l5d-ctx-dtab") {
            line = format!("{line} [l5d-ctx-dtab: {}]", dtab.to_str().unwrap_or("?"));
        }
        let mut response = Response::new(Full::new(Bytes::from(format!("{line}\n"))));
        *response.status_mut() = status;
        if let Ok(value) = HeaderValue::from_str(&self.identity()) {
            response.headers_mut().insert(SERVED_BY, value);
        }
        response
    }

    /// Calls `downstream` through the router, carrying the request's context headers.
    async fn call(
        &self,
        downstream: &str,
        context: &[(header::HeaderName, HeaderValue)],
        client: &Client<HttpConnector, Full<Bytes>>,
    ) -> Result<String, String> {
        let mut request = Request::get(format!("http://{}/", self.router))
            .header(header::HOST, downstream)
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        for (name, value) in context {
            request.headers_mut().append(name.clone(), value.clone());
        }
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        let text = String::from_utf8_lossy(&body).trim_end().to_string();
        if status.is_success() { Ok(text) } else { Err(format!("{status}: {text}")) }
    }
}
