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

/// `/svc => /a0 | /a1 | ... ` with `n` alternatives.
fn fanout(n: usize) -> String {
    format!("/svc => {}", (0..n).map(|i| format!("/a{i}")).collect::<Vec<_>>().join(" | "))
}

async fn delegate_post(namer: &Namer, url: String, dtab: &str) -> (StatusCode, String) {
    let body = serde_json::json!({"dtab": dtab, "path": "/svc/web"}).to_string();
    let response = client().post(url).header("content-type", "application/json").body(body).send().await.unwrap();
    let _ = namer;
    (response.status(), response.text().await.unwrap())
}

/// Finding 1: a delegation's output shares the dentry its thousands of alternatives came
/// from, one too large is refused, and none of it stops the namer from answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_delegations_are_bounded_and_the_namer_keeps_answering() {
    let namer = common::start("{}").await;
    let api = namer.url("/api/1/delegate");
    let admin = format!("http://{}/dtab/delegator.json", namer.admin);

    // 5,000 alternatives: answered, in output linear in the dtab.
    let dtab = fanout(5_000);
    for url in [api.clone(), admin.clone()] {
        let (status, body) = delegate_post(&namer, url.clone(), &dtab).await;
        assert_eq!(status, StatusCode::OK, "{url}: {body:.200}");
        let dst = dtab.trim_start_matches("/svc => ");
        assert_eq!(body.matches(dst).count(), 1, "{url}: the dentry is shown once");
        assert!(body.len() < 2 * dtab.len() + 80 * 5_000, "{url}: {} bytes", body.len());
        let tree: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(tree["alt"].as_array().map(Vec::len), Some(5_000));
    }

    // 20,000 alternatives (a 189 KB request) used to abort the process: now a 400 that says why,
    // while /live keeps answering.
    let big = fanout(20_000);
    assert!(big.len() > 150_000);
    let attacks: Vec<_> = (0..4)
        .map(|_| {
            let (namer_api, big) = (api.clone(), big.clone());
            tokio::spawn(async move {
                let body = serde_json::json!({"dtab": big, "path": "/svc/web"}).to_string();
                let response = client()
                    .post(namer_api)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                (response.status(), response.text().await.unwrap())
            })
        })
        .collect();
    let live = client().get(format!("http://{}/live", namer.admin)).send().await.unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    for attack in attacks {
        let (status, body) = attack.await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body:.300}");
        assert!(body.contains("lookups"), "{body:.300}");
    }

    // A stored dtab of 50,000 alternatives, delegated with GET.
    let stored = fanout(50_000);
    let put = client()
        .put(namer.url("/api/1/dtabs/huge"))
        .header("content-type", "application/dtab")
        .body(stored)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::NO_CONTENT);
    let response = client().get(namer.url("/api/1/delegate/huge?path=/svc/web")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(client().get(namer.url("/api/1/dtabs")).send().await.unwrap().status(), StatusCode::OK);
    namer.stop().await;
}

/// Finding 1: a delegation that cannot finish within `request_timeout_ms` answers 503, as
/// namerd's delegation timeout does, and stops computing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delegation_honours_the_request_timeout() {
    let namer = common::start("interpreter:\n  request_timeout_ms: 1\n").await;
    let (status, body) = delegate_post(&namer, namer.url("/api/1/delegate"), &fanout(9_000)).await;
    assert_eq!((status, body.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "Request timed out.\n"));
    namer.stop().await;
}

/// Finding 1, over gRPC: the Delegator answers a wide delegation in a message that carries
/// the long dentry once, and refuses one past the limits with RESOURCE_EXHAUSTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_delegation_is_bounded_too() {
    use waymark_proto::mesh;
    use waymark_proto::mesh::delegator_client::DelegatorClient;
    use waymark_proto::request::DelegateTreeRequest;

    let namer = common::start("{}").await;
    let mut grpc = DelegatorClient::connect(format!("http://{}", namer.mesh)).await.unwrap();
    let request = |dtab: &str| {
        mesh::DelegateTreeReq::from(&DelegateTreeRequest {
            namespace: "default".into(),
            tree: waymark_dtab::NameTree::Leaf("/svc/web".parse().unwrap()),
            dtab: dtab.parse().unwrap(),
        })
    };
    let wide = grpc.get_delegate_tree(request(&fanout(5_000))).await.unwrap().into_inner();
    let tree = waymark_dtab::DelegateTree::try_from(wide.tree.as_ref().unwrap()).unwrap();
    let waymark_dtab::DelegateNode::Alt(children) = &tree.node else { panic!("{:?}", tree.node) };
    assert_eq!(children.len(), 5_000);
    assert_eq!(children.iter().filter(|c| !c.dentry.is_nop()).count(), 1);

    let refused = grpc.get_delegate_tree(request(&fanout(20_000))).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    namer.stop().await;
}

/// A NUL byte (or any control character) a client sends is never echoed raw in an error.
#[tokio::test]
async fn control_characters_are_never_echoed_raw_in_errors() {
    let namer = common::start("{}").await;
    let responses = [
        client().get(namer.url("/api/1/bind/default?path=/svc/a%00b%1B[2J")).send().await.unwrap(),
        client().get(namer.url("/api/1/delegate/default?path=%00")).send().await.unwrap(),
        client()
            .post(namer.url("/api/1/delegate"))
            .header("content-type", "application/json")
            .body("{\"path\": \0\u{1b}}")
            .send()
            .await
            .unwrap(),
        client()
            .post(namer.url("/api/1/dtabs/web"))
            .header("content-type", "application/json")
            .body("[{\"prefix\":\"/a\",\"dst\":\"/b\"},null,\"\0\"]")
            .send()
            .await
            .unwrap(),
        client()
            .put(namer.url("/api/1/dtabs/web"))
            .header("content-type", "application/dtab")
            .body("/a => /b\0")
            .send()
            .await
            .unwrap(),
    ];
    for response in responses {
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body = response.bytes().await.unwrap();
        assert!(!body.iter().any(|&b| b == 0 || b == 0x1b), "{:?}", String::from_utf8_lossy(&body));
    }
    namer.stop().await;
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Finding 4, the namer's side: distinct overrides are bounded by count (and bytes); idle ones
/// make room at once, held ones refuse the next override, and plain bindings never suffer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn override_bindings_are_bounded_and_plain_bindings_are_not_affected() {
    use waymark_proto::mesh;
    use waymark_proto::mesh::interpreter_client::InterpreterClient;
    use waymark_proto::request::BindRequest;

    let namer = common::start("interpreter:\n  max_override_bindings: 50\n").await;
    write(&namer, reqwest::Method::PUT, "default", "/svc => /$/inet/127.0.0.1/1", None).await;
    let mut grpc = InterpreterClient::connect(format!("http://{}", namer.mesh)).await.unwrap();
    let request = |dtab: &str| {
        mesh::BindReq::from(&BindRequest {
            namespace: "default".into(),
            name: "/svc/web".parse().unwrap(),
            dtab: dtab.parse().unwrap(),
        })
    };
    let padding = "/pad".repeat(200);
    let distinct = |i: usize| format!("/svc/web => /$/inet/127.0.0.1/{i}; /unused{padding} => /x");

    // Many distinct overrides, one after the other: each is idle once answered.
    for i in 0..200 {
        grpc.get_bound_tree(request(&distinct(i + 2))).await.unwrap();
    }
    let metrics = client().get(format!("http://{}/metrics", namer.admin)).send().await.unwrap().text().await.unwrap();
    let kept = metric(&metrics, "waymark_namer_interpreter_override_bindings").unwrap();
    assert!(kept <= 50.0, "{kept} override bindings kept");
    assert!(metric(&metrics, "waymark_namer_interpreter_override_bindings_evicted_total").unwrap() >= 150.0);

    // Fifty held open: the next distinct override is refused, plain bindings still bind.
    let mut held = Vec::new();
    for i in 0..50 {
        let mut stream = grpc.stream_bound_tree(request(&distinct(1_000 + i))).await.unwrap().into_inner();
        stream.message().await.unwrap().expect("a first tree");
        held.push(stream);
    }
    let refused = grpc.get_bound_tree(request(&distinct(2_000))).await.unwrap_err();
    assert!(refused.message().contains("too many distinct dtab overrides"), "{refused:?}");
    let plain = grpc.get_bound_tree(request("")).await.unwrap().into_inner();
    let ip = b"127.0.0.1".to_vec();
    assert!(format!("{plain:?}").contains(&format!("{ip:?}")), "{plain:?}");
    let bind = client().get(namer.url("/api/1/bind/default?path=/svc/other")).send().await.unwrap();
    assert_eq!(bind.status(), StatusCode::OK);
    drop(held);
    namer.stop().await;
}
