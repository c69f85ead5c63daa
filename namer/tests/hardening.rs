//! The namer under hostile clients and unlucky disks, through real sockets: each test here
//! reproduces one way a namer used to fail (a request that exhausted it, a connection pattern
//! that starved it, a write that won when it should have lost) and checks that it holds.

mod common;

use common::Namer;
use reqwest::StatusCode;

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn write(
    namer: &Namer,
    method: reqwest::Method,
    ns: &str,
    dtab: &str,
    if_match: Option<&str>,
) -> reqwest::Response {
    let mut request = client()
        .request(method, namer.url(&format!("/api/1/dtabs/{ns}")))
        .header("content-type", "application/dtab")
        .body(dtab.to_string());
    if let Some(version) = if_match {
        request = request.header("if-match", version);
    }
    request.send().await.unwrap()
}

async fn delete(namer: &Namer, ns: &str, if_match: Option<&str>) -> reqwest::Response {
    let mut request = client().delete(namer.url(&format!("/api/1/dtabs/{ns}")));
    if let Some(version) = if_match {
        request = request.header("if-match", version);
    }
    request.send().await.unwrap()
}

async fn dtab_text(namer: &Namer, ns: &str) -> (StatusCode, String) {
    let response = client()
        .get(namer.url(&format!("/api/1/dtabs/{ns}")))
        .header("accept", "application/dtab")
        .send()
        .await
        .unwrap();
    (response.status(), response.text().await.unwrap())
}

fn etag(response: &reqwest::Response) -> String {
    response.headers().get("etag").expect("an ETag").to_str().unwrap().to_string()
}

/// Every store, as a namer configuration.
fn stores(dir: &std::path::Path) -> Vec<String> {
    vec!["{}".to_string(), format!("storage:\n  kind: file\n  dir: {}\n", dir.display())]
}

/// Finding 5: a version from before a delete and re-create must not win.
#[tokio::test]
async fn a_version_from_before_a_delete_and_re_create_gets_412() {
    let dir = tempfile::tempdir().unwrap();
    for yaml in stores(dir.path()) {
        let namer = common::start(&yaml).await;
        let created = write(&namer, reqwest::Method::POST, "web", "/svc=>/old", None).await;
        assert_eq!(created.status(), StatusCode::NO_CONTENT, "{yaml}");
        let old = etag(&created);
        assert_eq!(delete(&namer, "web", None).await.status(), StatusCode::NO_CONTENT);
        let recreated = write(&namer, reqwest::Method::POST, "web", "/svc=>/new", None).await;
        assert_ne!(etag(&recreated), old, "{yaml}");

        let stale = write(&namer, reqwest::Method::PUT, "web", "/svc=>/stale", Some(&old)).await;
        assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED, "{yaml}");
        let why = stale.text().await.unwrap();
        assert!(why.contains("changed since"), "{why}");
        assert_eq!(dtab_text(&namer, "web").await, (StatusCode::OK, "/svc=>/new\n".to_string()), "{yaml}");

        let history = client().get(namer.url("/api/1/dtabs/web/history")).send().await.unwrap().text().await.unwrap();
        let history: serde_json::Value = serde_json::from_str(&history).unwrap();
        let versions: Vec<&str> = history.as_array().unwrap().iter().map(|e| e["version"].as_str().unwrap()).collect();
        let distinct: std::collections::HashSet<&&str> = versions.iter().collect();
        assert_eq!(distinct.len(), versions.len(), "{yaml}: {versions:?}");
        namer.stop().await;
    }
}

/// Finding 6: DELETE honours If-Match; an empty or garbage one is refused, `*` means "exists".
#[tokio::test]
async fn delete_honours_if_match() {
    let dir = tempfile::tempdir().unwrap();
    for yaml in stores(dir.path()) {
        let namer = common::start(&yaml).await;
        let first = etag(&write(&namer, reqwest::Method::POST, "web", "/svc=>/a", None).await);
        let second = etag(&write(&namer, reqwest::Method::PUT, "web", "/svc=>/b", Some(&first)).await);

        for refused in [first.as_str(), "garbage!", "", "AAAAAAAAAAE="] {
            let response = delete(&namer, "web", Some(refused)).await;
            assert_eq!(response.status(), StatusCode::PRECONDITION_FAILED, "{yaml}: If-Match {refused:?}");
            assert!(!response.text().await.unwrap().is_empty(), "a 412 says why");
            assert_eq!(dtab_text(&namer, "web").await.1, "/svc=>/b\n", "{yaml}: If-Match {refused:?}");
        }
        // An empty If-Match is not "no condition" for a PUT either.
        let put = write(&namer, reqwest::Method::PUT, "web", "/svc=>/c", Some("")).await;
        assert_eq!(put.status(), StatusCode::PRECONDITION_FAILED);

        assert_eq!(delete(&namer, "web", Some(&format!("\"{second}\""))).await.status(), StatusCode::NO_CONTENT);
        assert_eq!(dtab_text(&namer, "web").await.0, StatusCode::NOT_FOUND);
        assert_eq!(delete(&namer, "web", Some(&second)).await.status(), StatusCode::NOT_FOUND);

        // `*`: whatever the version, as long as the namespace exists.
        write(&namer, reqwest::Method::POST, "api", "/svc=>/a", None).await;
        write(&namer, reqwest::Method::PUT, "api", "/svc=>/b", None).await;
        assert_eq!(
            write(&namer, reqwest::Method::PUT, "api", "/svc=>/c", Some("*")).await.status(),
            StatusCode::NO_CONTENT
        );
        assert_eq!(delete(&namer, "api", Some("*")).await.status(), StatusCode::NO_CONTENT);
        let absent = delete(&namer, "api", Some("*")).await;
        assert_eq!(absent.status(), StatusCode::PRECONDITION_FAILED);
        assert!(absent.text().await.unwrap().contains("does not exist"));
        assert_eq!(
            write(&namer, reqwest::Method::PUT, "api", "/svc=>/d", Some("*")).await.status(),
            StatusCode::PRECONDITION_FAILED
        );
        assert_eq!(dtab_text(&namer, "api").await.0, StatusCode::NOT_FOUND);
        namer.stop().await;
    }
}
