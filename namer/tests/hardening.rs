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

/// Waits, generously, for the server to close `stream`; true when it did.
async fn closed_by_server(stream: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

const SHORT_LIMITS: &str = "{header_read_timeout_ms: 300, idle_timeout_ms: 600}";

/// Finding 2: silent, half-sent and idle connections are closed on every server: the HTTP
/// API, the gRPC API and the admin port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_half_sent_and_idle_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    let namer = common::start(&format!(
        "interfaces:\n  - kind: io.l5d.httpController\n    limits: {SHORT_LIMITS}\n  - kind: io.l5d.mesh\n    limits: {SHORT_LIMITS}\nadmin:\n  limits: {SHORT_LIMITS}\n"
    ))
    .await;
    for (server, addr) in [("http", namer.http), ("grpc", namer.mesh), ("admin", namer.admin)] {
        let mut silent = TcpStream::connect(addr).await.unwrap();
        assert!(closed_by_server(&mut silent).await, "{server}: a silent connection is closed");

        let mut half = TcpStream::connect(addr).await.unwrap();
        half.write_all(b"GET /live HTTP/1.1\r\nHost: namer\r\n").await.unwrap();
        assert!(closed_by_server(&mut half).await, "{server}: a half-sent request is closed");
    }
    // A keep-alive connection that has finished its request is closed once idle.
    for addr in [namer.http, namer.admin] {
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET /api/1/dtabs HTTP/1.1\r\nHost: namer\r\n\r\n").await.unwrap();
        let mut first = [0u8; 9];
        idle.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"HTTP/1.1 ");
        assert!(closed_by_server(&mut idle).await, "{addr}: an idle keep-alive connection is closed");
    }
    // An HTTP/2 client that sends its preface and then nothing is closed once idle.
    let mut h2 = TcpStream::connect(namer.mesh).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.unwrap();
    assert!(closed_by_server(&mut h2).await, "an idle HTTP/2 connection is closed");

    let metrics = client().get(format!("http://{}/metrics", namer.admin)).send().await.unwrap().text().await.unwrap();
    // The gRPC port speaks HTTP/2 only: the HTTP/1 request is refused at once, not timed out.
    for (server, closed) in [("http", 2.0), ("grpc", 1.0), ("admin", 2.0)] {
        let header = metric(
            &metrics,
            &format!("waymark_namer_connection_timeouts_total{{server=\"{server}\",reason=\"header_read\"}}"),
        );
        assert!(header.unwrap_or(0.0) >= closed, "{server}: {metrics}");
    }
    namer.stop().await;
}

/// Finding 2: a request body that stops arriving fails instead of holding the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_fails() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let namer = common::start(&format!(
        "interfaces:\n  - kind: io.l5d.httpController\n    limits: {SHORT_LIMITS}\n  - kind: io.l5d.mesh\n"
    ))
    .await;
    let mut stalled = tokio::net::TcpStream::connect(namer.http).await.unwrap();
    stalled
        .write_all(b"PUT /api/1/dtabs/web HTTP/1.1\r\nHost: namer\r\nContent-Type: application/dtab\r\nContent-Length: 100\r\n\r\n/svc=>")
        .await
        .unwrap();
    let mut response = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(20), stalled.read_to_end(&mut response)).await;
    assert!(read.is_ok(), "the connection is answered or closed");
    let text = String::from_utf8_lossy(&response);
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 4"), "{text}");
    assert_eq!(client().get(namer.url("/api/1/dtabs/web")).send().await.unwrap().status(), StatusCode::NOT_FOUND);
    namer.stop().await;
}

/// Finding 2: a server holds at most `max_connections`. At the limit, the connection idle
/// the longest makes room for a new one, so silent sockets cannot lock clients out; when every
/// connection is busy, the new one waits. Both are counted, and the admin port, with its own
/// limit, still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_per_server_and_idle_ones_make_room() {
    use tokio::net::TcpStream;

    let namer = common::start(
        "interfaces:\n  - kind: io.l5d.httpController\n    limits: {max_connections: 4, header_read_timeout_ms: 60000}\n  - kind: io.l5d.mesh\n",
    )
    .await;
    let admin_metrics = format!("http://{}/metrics", namer.admin);
    let scrape = || async { client().get(&admin_metrics).send().await.unwrap().text().await.unwrap() };

    // Four silent sockets: a real client is still served, and the oldest socket is closed.
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(TcpStream::connect(namer.http).await.unwrap());
        // One at a time, so that the first is the oldest.
        while metric(&scrape().await, "waymark_namer_connections_total{server=\"http\"}").unwrap_or(0.0)
            < silent.len() as f64
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    let served = client().get(namer.url("/api/1/dtabs")).send().await.unwrap();
    assert_eq!(served.status(), StatusCode::OK);
    assert!(closed_by_server(&mut silent[0]).await, "the oldest silent socket made room");
    let metrics = scrape().await;
    assert!(metric(&metrics, "waymark_namer_connections_evicted_total{server=\"http\"}").unwrap() >= 1.0);
    assert!(metric(&metrics, "waymark_namer_connection_limit_reached_total{server=\"http\"}").unwrap() >= 1.0);
    drop(silent);

    // Four watch streams in progress: busy connections are never closed for room; the next
    // client waits until one ends.
    let mut watches = Vec::new();
    for _ in 0..4 {
        let response = client().get(namer.url("/api/1/dtabs?watch=true")).send().await.unwrap();
        let mut lines = common::Lines::new(response);
        assert_eq!(lines.next().await, "[]");
        watches.push(lines);
    }
    let reached =
        |metrics: &str| metric(metrics, "waymark_namer_connection_limit_reached_total{server=\"http\"}").unwrap_or(0.0);
    let mut before = reached(&scrape().await);
    for _ in 0..200 {
        let metrics = scrape().await;
        if metric(&metrics, "waymark_namer_open_connections{server=\"http\"}") == Some(4.0) {
            before = reached(&metrics);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let waiting = tokio::spawn(client().get(namer.url("/api/1/dtabs")).send());
    let mut blocked = false;
    for _ in 0..200 {
        if reached(&scrape().await) > before {
            blocked = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(blocked, "the limit was reached again and counted");
    assert!(!waiting.is_finished(), "a fifth client waits while four requests are in progress");
    watches.pop();
    let answered = tokio::time::timeout(std::time::Duration::from_secs(20), waiting).await;
    assert_eq!(answered.expect("served once a request ends").unwrap().unwrap().status(), StatusCode::OK);
    namer.stop().await;
}

/// Finding 3: when the `io.l5d.fs` directory cannot be read, the namer keeps its last good
/// names and addresses, publishes nothing negative, and says so in `/ready` and metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_fs_directory_keeps_the_last_good_routes_and_is_reported() {
    let parent = tempfile::tempdir().unwrap();
    let disco = parent.path().join("disco");
    std::fs::create_dir(&disco).unwrap();
    std::fs::write(disco.join("web"), "127.0.0.1 8080\n").unwrap();
    let namer = common::start(&format!(
        "namers:\n  - kind: io.l5d.fs\n    root_dir: {}\n    poll_interval_ms: 50\n",
        disco.display()
    ))
    .await;
    write(&namer, reqwest::Method::PUT, "default", "/svc => /#/io.l5d.fs", None).await;
    let watch = client().get(namer.url("/api/1/bind/default?path=/svc/web&watch=true")).send().await.unwrap();
    let mut trees = common::Lines::new(watch);
    assert!(trees.next().await.contains("/#/io.l5d.fs/web"));
    let ready = format!("http://{}/ready", namer.admin);
    assert_eq!(client().get(&ready).send().await.unwrap().status(), StatusCode::OK);

    // The directory cannot be listed any more.
    std::fs::rename(&disco, parent.path().join("moved")).unwrap();
    std::fs::write(&disco, "not a directory").unwrap();
    let mut why = String::new();
    for _ in 0..400 {
        let response = client().get(&ready).send().await.unwrap();
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            why = response.text().await.unwrap();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(why.contains("/#/io.l5d.fs") && why.contains("last good"), "{why}");
    let metrics = client().get(format!("http://{}/metrics", namer.admin)).send().await.unwrap().text().await.unwrap();
    assert_eq!(metric(&metrics, "waymark_namer_interpreter_namer_available{namer=\"/#/io.l5d.fs\"}"), Some(0.0));
    assert!(
        metric(&metrics, "waymark_namer_interpreter_namer_read_failures_total{namer=\"/#/io.l5d.fs\"}").unwrap() >= 1.0
    );
    // Nothing was published: the binding and the addresses are what they were.
    assert!(
        trees.quiet_for(std::time::Duration::from_millis(500)).await,
        "no new tree while the directory is unreadable"
    );
    let bound =
        client().get(namer.url("/api/1/bind/default?path=/svc/web")).send().await.unwrap().text().await.unwrap();
    assert!(bound.contains("/#/io.l5d.fs/web") && bound.contains("8080"), "{bound}");

    // Readable again.
    std::fs::remove_file(&disco).unwrap();
    std::fs::rename(parent.path().join("moved"), &disco).unwrap();
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..400 {
        status = client().get(&ready).send().await.unwrap().status();
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(status, StatusCode::OK);
    namer.stop().await;
}

/// Finding 8: a write a web page could send cross-site is refused with the reason; the CLI's
/// and scripts' writes (`application/dtab`, JSON, no `Origin`) keep working.
#[tokio::test]
async fn writes_a_web_page_could_send_are_refused() {
    let namer = common::start("{}").await;
    let url = namer.url("/api/1/dtabs/web");
    let attempt = |method: reqwest::Method, content_type: &'static str, origin: Option<String>| {
        let mut request = client().request(method, &url).header("content-type", content_type).body("/svc=>/evil");
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };
    let evil = Some("http://evil.example".to_string());
    for (method, content_type, origin, status) in [
        (reqwest::Method::POST, "text/plain", evil.clone(), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        (reqwest::Method::POST, "text/plain", None, StatusCode::UNSUPPORTED_MEDIA_TYPE),
        (reqwest::Method::POST, "application/x-www-form-urlencoded", None, StatusCode::UNSUPPORTED_MEDIA_TYPE),
        (reqwest::Method::POST, "multipart/form-data; boundary=x", None, StatusCode::UNSUPPORTED_MEDIA_TYPE),
        (reqwest::Method::POST, "application/dtab", evil.clone(), StatusCode::FORBIDDEN),
        (reqwest::Method::PUT, "application/json", evil.clone(), StatusCode::FORBIDDEN),
        (reqwest::Method::PUT, "application/dtab", Some("null".to_string()), StatusCode::FORBIDDEN),
    ] {
        let response = attempt(method.clone(), content_type, origin.clone()).await.unwrap();
        assert_eq!(response.status(), status, "{method} {content_type} from {origin:?}");
        let why = response.text().await.unwrap();
        assert!(why.contains("refused"), "{why}");
    }
    let cross_site = client()
        .post(&url)
        .header("content-type", "application/dtab")
        .header("sec-fetch-site", "cross-site")
        .body("/svc=>/evil")
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status(), StatusCode::FORBIDDEN);
    let delete = client().delete(&url).header("origin", "http://evil.example").send().await.unwrap();
    assert_eq!(delete.status(), StatusCode::FORBIDDEN);
    assert_eq!(dtab_text(&namer, "web").await.0, StatusCode::NOT_FOUND, "nothing was written");

    // The namer's own origin (a same-origin page, such as a UI it serves) and plain clients may write.
    let own = Some(format!("http://{}", namer.http));
    assert_eq!(attempt(reqwest::Method::POST, "application/dtab", own).await.unwrap().status(), StatusCode::NO_CONTENT);
    let json = client()
        .put(&url)
        .header("content-type", "application/json")
        .body(r#"[{"prefix":"/svc","dst":"/b"}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(json.status(), StatusCode::NO_CONTENT);
    assert_eq!(delete_plain(&namer).await, StatusCode::NO_CONTENT);
    namer.stop().await;
}

async fn delete_plain(namer: &Namer) -> StatusCode {
    delete(namer, "web", None).await.status()
}

/// Finding 9: a long history of large dtabs is read a page at a time (each within a byte
/// budget, the next offered in `Link`), and a store refuses more namespaces or bytes than its
/// limits allow, saying which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_paged_and_the_store_is_bounded() {
    let namer =
        common::start("storage:\n  kind: memory\n  limits:\n    max_namespaces: 3\n    max_stored_bytes: 800000\n")
            .await;
    // 30 versions of a 300 KB dtab: 9 MB of history, more than 30 MB as JSON.
    let padding = "/x".repeat(150_000);
    for i in 0..30 {
        let put = write(&namer, reqwest::Method::PUT, "big", &format!("/svc=>/v{i}{padding}"), None).await;
        assert_eq!(put.status(), StatusCode::NO_CONTENT);
    }
    let mut url = namer.url("/api/1/dtabs/big/history");
    let mut versions = Vec::new();
    let mut pages = 0;
    loop {
        let response = client().get(&url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let next = response.headers().get("link").map(|l| l.to_str().unwrap().to_string());
        let body = response.text().await.unwrap();
        assert!(body.len() < 6 * 1024 * 1024, "a page of {} bytes", body.len());
        let page: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        versions.extend(page.iter().map(|e| e["version"].as_str().unwrap().to_string()));
        pages += 1;
        let Some(next) = next else { break };
        let target = next.split_once('<').unwrap().1.split_once('>').unwrap().0;
        url = namer.url(target);
    }
    assert!(pages > 3, "{pages} pages");
    assert_eq!(versions.len(), 30);
    let distinct: std::collections::HashSet<&String> = versions.iter().collect();
    assert_eq!(distinct.len(), 30);
    let small = client().get(namer.url("/api/1/dtabs/big/history?limit=2")).send().await.unwrap();
    assert!(small.headers().get("link").unwrap().to_str().unwrap().contains("offset=2&limit=2"));

    // Bytes: the 300 KB dtab and a second fit in 800 KB, a third does not.
    for ns in ["b", "c"] {
        let put = write(&namer, reqwest::Method::PUT, ns, &format!("/svc=>/a{padding}"), None).await;
        if ns == "b" {
            assert_eq!(put.status(), StatusCode::NO_CONTENT);
        } else {
            assert_eq!(put.status(), StatusCode::INSUFFICIENT_STORAGE);
            assert!(put.text().await.unwrap().contains("max_stored_bytes"));
        }
    }
    // Namespaces: three at most.
    assert_eq!(write(&namer, reqwest::Method::PUT, "c", "/svc=>/a", None).await.status(), StatusCode::NO_CONTENT);
    let fourth = write(&namer, reqwest::Method::PUT, "d", "/svc=>/a", None).await;
    assert_eq!(fourth.status(), StatusCode::INSUFFICIENT_STORAGE);
    assert!(fourth.text().await.unwrap().contains("max_namespaces"));
    namer.stop().await;
}
