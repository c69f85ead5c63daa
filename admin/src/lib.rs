//! The namer's admin port: Prometheus metrics, readiness, liveness and the log level, which
//! can be changed while the process runs. The logging set-up itself is `waymark-log`'s,
//! re-exported here. (The router serves the same routes from plain hyper, without axum.)
//!
//! | path | answer |
//! | --- | --- |
//! | `GET /metrics` | every registered metric, Prometheus text format |
//! | `GET /ready` | 200 `ready`, or 503 with the reason |
//! | `GET /live` | 200 `live` while the process serves |
//! | `GET /logging` | the current log filter |
//! | `PUT /logging` | a new log filter (the body), such as `debug` or `waymark_router=trace,info` |

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
pub use waymark_log::{LogControl, LogFormat, init_logging};

/// Decides whether the process is ready to take traffic; `Err` says why not.
pub type ReadinessCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The admin routes of one process.
#[derive(Clone)]
pub struct Admin {
    registry: Arc<Registry>,
    ready: ReadinessCheck,
    log: Option<LogControl>,
}

impl Admin {
    /// Admin routes over `registry`, ready when `ready` says so. `log` is `None` when the
    /// process does not own the logger (for example in tests).
    pub fn new(registry: Registry, ready: ReadinessCheck, log: Option<LogControl>) -> Self {
        Admin { registry: Arc::new(registry), ready, log }
    }

    /// The routes; merge a process's own admin routes into them.
    pub fn router(self) -> Router {
        Router::new()
            .route("/metrics", get(metrics))
            // Linkerd 1's names for the same, so that its dashboards and probes keep working.
            .route("/admin/metrics/prometheus", get(metrics))
            .route("/admin/ping", get(|| async { "pong" }))
            .route("/ready", get(ready))
            .route("/live", get(|| async { "live\n" }))
            .route("/logging", get(get_logging).put(put_logging))
            .with_state(self)
    }
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").finish_non_exhaustive()
    }
}

async fn metrics(State(admin): State<Admin>) -> Response {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &admin.registry) {
        return (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics: {e}\n")).into_response();
    }
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

async fn ready(State(admin): State<Admin>) -> Response {
    match (admin.ready)() {
        Ok(()) => "ready\n".into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")).into_response(),
    }
}

async fn get_logging(State(admin): State<Admin>) -> Response {
    match &admin.log {
        Some(log) => format!("{}\n", log.current()).into_response(),
        None => (StatusCode::NOT_FOUND, "this process does not own its logger\n").into_response(),
    }
}

async fn put_logging(State(admin): State<Admin>, body: Bytes) -> Response {
    let Some(log) = &admin.log else {
        return (StatusCode::NOT_FOUND, "this process does not own its logger\n").into_response();
    };
    let filter = String::from_utf8_lossy(&body);
    match log.set(&filter) {
        Ok(()) => format!("{}\n", log.current()).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use prometheus_client::metrics::counter::Counter;
    use tower::ServiceExt;

    async fn get(router: &Router, path: &str) -> (StatusCode, String) {
        let response = router.clone().oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn metrics_readiness_and_liveness() {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        registry.register("demo_events", "Events seen", counter.clone());
        counter.inc_by(3);
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ready.clone();
        let check: ReadinessCheck = Arc::new(move || {
            if flag.load(std::sync::atomic::Ordering::SeqCst) { Ok(()) } else { Err("store not synced".into()) }
        });
        let router = Admin::new(registry, check, None).router();
        let (status, text) = get(&router, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(text.contains("demo_events_total 3"), "{text}");
        assert_eq!(
            get(&router, "/ready").await,
            (StatusCode::SERVICE_UNAVAILABLE, "not ready: store not synced\n".into())
        );
        ready.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(get(&router, "/ready").await, (StatusCode::OK, "ready\n".into()));
        assert_eq!(get(&router, "/live").await, (StatusCode::OK, "live\n".into()));
        assert_eq!(get(&router, "/logging").await.0, StatusCode::NOT_FOUND);
    }
}
