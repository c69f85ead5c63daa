//! The admin port's `/delegator.json` under delegations a client makes as large as it can:
//! bounded, off the runtime's threads, and never at the cost of the admin port's other routes.

mod support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use support::*;

fn fanout(n: usize) -> String {
    format!("/svc => {}", (0..n).map(|i| format!("/a{i}")).collect::<Vec<_>>().join(" | "))
}

async fn delegate(admin: std::net::SocketAddr, dtab: String) -> Got {
    let body = serde_json::json!({"dtab": dtab, "path": "/svc/web"}).to_string();
    let request = Request::post(format!("http://{admin}/delegator.json"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    send(&h1(), request).await
}

/// Finding 1, on a standalone router: a wide delegation is answered in output that shows the
/// dentry once; one past the limits is refused with the reason, and `/live` keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_delegations_are_bounded() {
    let yaml = "admin:\n  port: 0\nlisteners:\n  - port: 0\ninterpreter:\n  kind: standalone\n  dtab: /svc => /$/inet/127.0.0.1/1\n";
    let app = waymark_router::App::build(waymark_router::RouterConfig::from_yaml(yaml).unwrap()).await.unwrap();
    let admin = app.admin_addr();
    let task = tokio::spawn(app.run(std::future::pending()));

    let dtab = fanout(5_000);
    let wide = delegate(admin, dtab.clone()).await;
    assert_eq!(wide.status, StatusCode::OK, "{:.300}", wide.text());
    let text = wide.text();
    assert_eq!(text.matches(dtab.trim_start_matches("/svc => ")).count(), 1);
    assert!(text.len() < 2 * dtab.len() + 80 * 5_000, "{} bytes", text.len());

    let attacks: Vec<_> = (0..4).map(|_| tokio::spawn(delegate(admin, fanout(20_000)))).collect();
    let (live, _) = admin_get(admin, "/live").await;
    assert_eq!(live, StatusCode::OK);
    for attack in attacks {
        let refused = attack.await.unwrap();
        assert_ne!(refused.status, StatusCode::OK);
        assert!(refused.text().contains("lookups"), "{:.300}", refused.text());
    }
    task.abort();
}
