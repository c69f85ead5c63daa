//! namerd's HTTP API, through real sockets: every endpoint, the versioning and streaming
//! cases, and every error case.

mod common;

use std::time::Duration;

use common::{Lines, Namer};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn namer_with_fs(dir: &std::path::Path) -> Namer {
    common::start(&format!("namers:\n  - kind: io.l5d.fs\n    root_dir: {}\n    poll_interval_ms: 50\n", dir.display()))
        .await
}

async fn put_text(namer: &Namer, ns: &str, dtab: &str) -> reqwest::Response {
    client()
        .put(namer.url(&format!("/api/1/dtabs/{ns}")))
        .header("content-type", "application/dtab")
        .body(dtab.to_string())
        .send()
        .await
        .unwrap()
}

async fn text(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    (status, response.text().await.unwrap())
}

fn etag(response: &reqwest::Response) -> String {
    response.headers().get("etag").expect("an ETag").to_str().unwrap().to_string()
}

#[tokio::test]
async fn dtabs_are_created_read_versioned_and_deleted() {
    let namer = common::start("{}").await;
    let c = client();

    let list = c.get(namer.url("/api/1/dtabs")).send().await.unwrap();
    assert_eq!(list.headers()["content-type"], "application/json");
    assert_eq!(list.text().await.unwrap(), "[]\n");

    // Create: JSON or text; a second create conflicts.
    let created = c
        .post(namer.url("/api/1/dtabs/default"))
        .header("content-type", "application/json; charset=utf-8")
        .body(r#"[{"prefix":"/svc","dst":"/#/io.l5d.fs"}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::NO_CONTENT);
    let first = etag(&created);
    let again = c
        .post(namer.url("/api/1/dtabs/default"))
        .header("content-type", "application/dtab")
        .body("/a=>/b")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::CONFLICT);
    assert_eq!(c.get(namer.url("/api/1/dtabs/")).send().await.unwrap().text().await.unwrap(), "[\"default\"]\n");

    // Read as JSON (default) and as text, with the same ETag.
    let got = c.get(namer.url("/api/1/dtabs/default")).send().await.unwrap();
    assert_eq!(etag(&got), first);
    assert_eq!(got.headers()["content-type"], "application/json");
    assert_eq!(got.text().await.unwrap(), "[{\"prefix\":\"/svc\",\"dst\":\"/#/io.l5d.fs\"}]\n");
    for accept in ["application/dtab", "text/plain;q=0.9, application/xml"] {
        let got = c.get(namer.url("/api/1/dtabs/default")).header("accept", accept).send().await.unwrap();
        let expected_type = accept.split([';', ',']).next().unwrap();
        assert_eq!(got.headers()["content-type"], expected_type);
        assert_eq!(got.text().await.unwrap(), "/svc=>/#/io.l5d.fs\n");
    }
    let head = c.head(namer.url("/api/1/dtabs/default")).send().await.unwrap();
    assert_eq!((head.status(), etag(&head)), (StatusCode::OK, first.clone()));
    assert!(head.headers().get("content-type").is_none());

    // Compare-and-swap: the current version wins, a stale one is refused and changes nothing.
    let messy = "# comment\n/svc => 3 * /a & 1.0*/b | ( /c ) ;";
    let updated = c
        .put(namer.url("/api/1/dtabs/default"))
        .header("content-type", "application/dtab; charset=utf-8")
        .header("if-match", format!("\"{first}\""))
        .body(messy)
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status(), StatusCode::NO_CONTENT);
    let second = etag(&updated);
    assert_ne!(second, first);
    let stale = c
        .put(namer.url("/api/1/dtabs/default"))
        .header("content-type", "application/dtab")
        .header("if-match", &first)
        .body("/x=>/y")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    let undecodable = c
        .put(namer.url("/api/1/dtabs/default"))
        .header("content-type", "application/dtab")
        .header("if-match", "%%%")
        .body("/x=>/y")
        .send()
        .await
        .unwrap();
    assert_eq!(undecodable.status(), StatusCode::PRECONDITION_FAILED);
    let (_, stored) =
        text(c.get(namer.url("/api/1/dtabs/default")).header("accept", "application/dtab").send().await.unwrap()).await;
    assert_eq!(stored, "/svc=>3.00*/a & /b | /c\n", "stored in canonical form, unchanged by the stale writes");
    // Weights are kept as the canonical form stands for them: two decimals, as namerd does.
    assert_eq!(put_text(&namer, "weights", "/a => 0.333*/b & 1.004*/c & /d").await.status(), StatusCode::NO_CONTENT);
    let (_, stored) =
        text(c.get(namer.url("/api/1/dtabs/weights")).header("accept", "text/plain").send().await.unwrap()).await;
    assert_eq!(stored, "/a=>0.33*/b & /c & /d\n");

    // If-Match on a missing namespace is 404; PUT without it creates.
    let missing = c
        .put(namer.url("/api/1/dtabs/other"))
        .header("content-type", "application/dtab")
        .header("if-match", &first)
        .body("/x=>/y")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(put_text(&namer, "other", "/x=>/y").await.status(), StatusCode::NO_CONTENT);

    // Delete, then everything about the namespace is 404 with an empty body.
    let deleted = c.delete(namer.url("/api/1/dtabs/other")).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        text(c.delete(namer.url("/api/1/dtabs/other")).send().await.unwrap()).await,
        (StatusCode::NOT_FOUND, String::new())
    );
    assert_eq!(
        text(c.get(namer.url("/api/1/dtabs/other")).send().await.unwrap()).await,
        (StatusCode::NOT_FOUND, String::new())
    );
    assert_eq!(c.head(namer.url("/api/1/dtabs/other")).send().await.unwrap().status(), StatusCode::NOT_FOUND);

    // Other methods are refused with the methods that are allowed.
    let patch = c.patch(namer.url("/api/1/dtabs/default")).send().await.unwrap();
    assert_eq!(patch.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(patch.headers()["allow"], "GET, HEAD, POST, PUT, DELETE");
    namer.stop().await;
}

#[tokio::test]
async fn bad_bodies_are_400s_that_say_what_is_wrong() {
    let namer = common::start("{}").await;
    let c = client();
    let url = namer.url("/api/1/dtabs/default");

    let (status, body) = text(put_text(&namer, "default", "/a => /b;\n/c = > /d").await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.starts_with("Invalid dtab: line 2, column 4: expected '=>' but found '='"), "{body}");
    assert!(body.contains("  /c = > /d\n     ^"), "{body}");

    let (status, body) = text(c.post(&url).body("/a=>/b").send().await.unwrap()).await;
    assert_eq!((status, body.as_str()), (StatusCode::BAD_REQUEST, "Invalid Content-Type \"\". \n"));
    let (status, body) =
        text(c.put(&url).header("content-type", "image/png").body("/a=>/b").send().await.unwrap()).await;
    assert_eq!((status, body.as_str()), (StatusCode::BAD_REQUEST, "Invalid Content-Type \"image/png\". \n"));

    let null_dentry = r#"[{"prefix":"/a","dst":"/b"},null]"#;
    let (status, body) =
        text(c.post(&url).header("content-type", "application/json").body(null_dentry).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body, format!("The dtab contains invalid dentries: {null_dentry}\n"));
    let unknown_field = r#"[{"prefix":"/a","dst":"/b","weight":1}]"#;
    let (status, _) =
        text(c.post(&url).header("content-type", "application/json").body(unknown_field).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let bad_dst = r#"[{"prefix":"/a","dst":"/b &"}]"#;
    let (status, body) =
        text(c.post(&url).header("content-type", "application/json").body(bad_dst).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("dentry 0: invalid dst"), "{body}");

    let (status, body) = text(put_text(&namer, "bad%20name", "/a=>/b").await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("bad name"), "{body}");

    // Unknown routes answer at once.
    for path in ["/api/1/dtabsX", "/api/2/dtabs", "/nothing"] {
        assert_eq!(c.get(namer.url(path)).send().await.unwrap().status(), StatusCode::NOT_FOUND, "{path}");
    }
    namer.stop().await;
}

#[tokio::test]
async fn history_records_author_message_and_deletion_newest_first() {
    let namer = common::start("{}").await;
    let c = client();
    for (i, dtab) in ["/a=>/v1", "/a=>/v2"].iter().enumerate() {
        let response = c
            .put(namer.url("/api/1/dtabs/web"))
            .header("content-type", "application/dtab")
            .header("waymark-author", "alice")
            .header("waymark-message", format!("step%20{i}"))
            .body(dtab.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
    }
    c.delete(namer.url("/api/1/dtabs/web")).header("waymark-author", "bob").send().await.unwrap();
    let (status, body) = text(c.get(namer.url("/api/1/dtabs/web/history")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let history: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(history.len(), 3);
    assert_eq!(history[0]["dtab"], Value::Null);
    assert_eq!(history[0]["author"], "bob");
    assert_eq!(history[1]["dtab"], json!([{"prefix": "/a", "dst": "/v2"}]));
    assert_eq!((history[1]["author"].as_str(), history[1]["message"].as_str()), (Some("alice"), Some("step 1")));
    assert_eq!(history[2]["message"], "step 0");
    assert!(history.iter().all(|h| h["version"].as_str().is_some_and(|v| !v.is_empty()) && h["at"].is_string()));
    namer.stop().await;
}

#[tokio::test]
async fn dtab_watches_stream_the_current_state_then_changes() {
    let namer = common::start("{}").await;
    let c = client();
    // A watch on a namespace that does not exist yet is silent until it is created.
    let mut dtab = Lines::new(c.get(namer.url("/api/1/dtabs/default?watch=true")).send().await.unwrap());
    let mut list = Lines::new(c.get(namer.url("/api/1/dtabs?watch=1")).send().await.unwrap());
    assert_eq!(list.next().await, "[]");
    assert!(dtab.quiet_for(Duration::from_millis(200)).await);

    put_text(&namer, "default", "/a=>/b").await;
    assert_eq!(dtab.next().await, r#"[{"prefix":"/a","dst":"/b"}]"#);
    assert_eq!(list.next().await, r#"["default"]"#);

    // Writing the same dtab again is a new version but not a new document.
    put_text(&namer, "default", "/a => /b").await;
    put_text(&namer, "default", "/a=>/c").await;
    assert_eq!(dtab.next().await, r#"[{"prefix":"/a","dst":"/c"}]"#);

    let mut text_watch = Lines::new(
        c.get(namer.url("/api/1/dtabs/default?watch=TRUE")).header("accept", "application/dtab").send().await.unwrap(),
    );
    assert_eq!(text_watch.next().await, "/a=>/c");
    namer.stop().await;
}

#[tokio::test]
async fn bind_addr_and_resolve_follow_dtabs_and_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("web-v1"), "127.0.0.1 8081\n").unwrap();
    let namer = namer_with_fs(dir.path()).await;
    let c = client();
    put_text(&namer, "default", "/svc=>/#/io.l5d.fs").await;

    let (status, body) = text(c.get(namer.url("/api/1/bind/default?path=/svc/web-v1/x")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let bound: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        bound,
        json!({"type": "leaf", "bound": {
            "addr": {"type": "bound", "addrs": [{"ip": "127.0.0.1", "port": 8081, "meta": {}}], "meta": {}},
            "id": "/#/io.l5d.fs/web-v1", "path": "/x"}})
    );

    // The dtab parameter is appended, so it wins; an empty one is accepted.
    let over = "/svc/web-v1=>/$/inet/127.0.0.1/9";
    let url = format!("/api/1/bind/default?path=/svc/web-v1&dtab={}", urlencode(over));
    let bound: Value =
        serde_json::from_str(&c.get(namer.url(&url)).send().await.unwrap().text().await.unwrap()).unwrap();
    assert_eq!(bound["bound"]["id"], "/$/inet/127.0.0.1/9");
    assert_eq!(
        c.get(namer.url("/api/1/bind/default?path=/svc/web-v1&dtab=")).send().await.unwrap().status(),
        StatusCode::OK
    );

    // A namespace that does not exist is the empty dtab: namers still bind.
    let bound: Value = serde_json::from_str(
        &c.get(namer.url("/api/1/bind/nowhere?path=/%23/io.l5d.fs/web-v1")).send().await.unwrap().text().await.unwrap(),
    )
    .unwrap();
    assert_eq!(bound["bound"]["id"], "/#/io.l5d.fs/web-v1");
    // Without a namespace, the given dtab alone.
    let alone = format!("/api/1/bind?path=/w&dtab={}", urlencode("/w=>/#/io.l5d.fs/web-v1"));
    let bound: Value =
        serde_json::from_str(&c.get(namer.url(&alone)).send().await.unwrap().text().await.unwrap()).unwrap();
    assert_eq!(bound["bound"]["id"], "/#/io.l5d.fs/web-v1");

    // Bad input is a 400 that says what and where.
    for (url, starts) in [
        ("/api/1/bind/default", "Invalid path: the path parameter is required"),
        ("/api/1/bind/default?path=svc", "Invalid path: svc / line 1, column 1: expected '/'"),
        ("/api/1/bind/default?path=/svc&dtab=/a%3D%3E", "Invalid dtab: line 1, column 5"),
    ] {
        let (status, body) = text(c.get(namer.url(url)).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}");
        assert!(body.starts_with(starts), "{url}: {body}");
    }
    // A dtab that loops fails the binding with the reason.
    let looping = format!("/api/1/bind/default?path=/l&dtab={}", urlencode("/l=>/l"));
    let (status, body) = text(c.get(namer.url(&looping)).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body.contains("Max recursion level"), "{body}");

    // addr: a concrete id, a transformed id, an unknown one.
    for id in ["/%23/io.l5d.fs/web-v1", "/%25/io.l5d.port/1/%23/io.l5d.fs/web-v1"] {
        let addr: Value = serde_json::from_str(
            &c.get(namer.url(&format!("/api/1/addr/default?path={id}"))).send().await.unwrap().text().await.unwrap(),
        )
        .unwrap();
        assert_eq!(addr["addrs"][0]["port"], 8081, "{id}");
    }
    let neg =
        c.get(namer.url("/api/1/addr/default?path=/%23/io.l5d.fs/nope")).send().await.unwrap().text().await.unwrap();
    assert_eq!(neg, "{\"type\":\"neg\"}\n");

    // resolve picks a union branch by weight.
    std::fs::write(dir.path().join("web-v2"), "127.0.0.1 8082\n").unwrap();
    put_text(&namer, "default", "/svc=>/#/io.l5d.fs;/svc/web=>0.25*/svc/web-v2 & 0.75*/svc/web-v1").await;
    let mut v2 = 0;
    const CALLS: usize = 400;
    for _ in 0..CALLS {
        let response = c.get(namer.url("/api/1/resolve/default?path=/svc/web")).send().await.unwrap();
        assert_eq!(response.headers()["content-type"], "application/json");
        let addr: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        match addr["addrs"][0]["port"].as_u64() {
            Some(8082) => v2 += 1,
            Some(8081) => {}
            other => panic!("unexpected resolution {other:?}: {addr}"),
        }
    }
    // 25% of 400 is 100, with a standard deviation of about 8.7: 5 deviations either side.
    assert!((57..=143).contains(&v2), "web-v2 got {v2} of {CALLS}");
    let neg = c.get(namer.url("/api/1/resolve/default?path=/nothing")).send().await.unwrap().text().await.unwrap();
    assert_eq!(neg, "{\"type\":\"neg\"}\n");
    namer.stop().await;
}

#[tokio::test]
async fn bind_watches_follow_dtab_and_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("web-v1"), "127.0.0.1 8081\n").unwrap();
    let namer = namer_with_fs(dir.path()).await;
    put_text(&namer, "default", "/svc=>/#/io.l5d.fs;/svc/web=>/svc/web-v2 | /svc/web-v1").await;
    let mut bind =
        Lines::new(client().get(namer.url("/api/1/bind/default?path=/svc/web&watch=true")).send().await.unwrap());
    let id = |line: &str| serde_json::from_str::<Value>(line).unwrap()["bound"]["id"].as_str().unwrap().to_string();
    let port = |line: &str| serde_json::from_str::<Value>(line).unwrap()["bound"]["addr"]["addrs"][0]["port"].clone();
    assert_eq!(id(&bind.next().await), "/#/io.l5d.fs/web-v1");

    // A new file makes the preferred alternative bind.
    std::fs::write(dir.path().join("web-v2"), "127.0.0.1 8082\n").unwrap();
    let line = bind.next().await;
    assert_eq!((id(&line), port(&line)), ("/#/io.l5d.fs/web-v2".to_string(), json!(8082)));
    // A changed address is a new document without a new binding.
    std::fs::write(dir.path().join("web-v2"), "127.0.0.1 9092\n").unwrap();
    assert_eq!(port(&bind.next().await), json!(9092));
    // A dtab change too.
    put_text(&namer, "default", "/svc/web=>/$/inet/127.0.0.1/7").await;
    assert_eq!(id(&bind.next().await), "/$/inet/127.0.0.1/7");
    namer.stop().await;
}

#[tokio::test]
async fn delegation_explains_with_stored_and_given_dtabs() {
    let namer = common::start("{}").await;
    let c = client();
    put_text(&namer, "default", "/svc=>/$/inet/127.1;/svc/web=>/svc/8080 | /$/fail").await;

    let response = c.get(namer.url("/api/1/delegate/default?path=/svc/web")).send().await.unwrap();
    assert_eq!(response.headers()["content-type"], "application/json");
    let body = response.text().await.unwrap();
    assert!(!body.ends_with('\n'), "namerd sends no newline after a delegate tree");
    let tree: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(tree["type"], "alt");
    assert_eq!(tree["path"], "/svc/web");
    assert!(tree.get("dentry").is_none(), "the root has no dentry");
    let first = &tree["alt"][0];
    assert_eq!(first["dentry"], json!({"prefix": "/svc/web", "dst": "/svc/8080 | /$/fail"}));
    assert_eq!(first["delegate"]["bound"]["addr"]["addrs"][0], json!({"ip": "127.0.0.1", "port": 8080, "meta": {}}));

    // Without a namespace, the given dtab alone; with one, stored ++ given.
    let alone = format!("/api/1/delegate?path=/svc/web&dtab={}", urlencode("/svc=>/$/nil"));
    let tree: Value =
        serde_json::from_str(&c.get(namer.url(&alone)).send().await.unwrap().text().await.unwrap()).unwrap();
    assert_eq!(tree["delegate"]["type"], "empty");
    let with_ns = format!("/api/1/delegate?namespace=default&path=/svc/web&dtab={}", urlencode("/svc/web=>~"));
    let tree: Value =
        serde_json::from_str(&c.get(namer.url(&with_ns)).send().await.unwrap().text().await.unwrap()).unwrap();
    assert_eq!(tree["alt"].as_array().unwrap().len(), 4, "{tree}");

    let posted = c
        .post(namer.url("/api/1/delegate"))
        .header("content-type", "application/json")
        .body(r#"{"namespace":"default","dtab":"","path":"/svc/web"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), StatusCode::OK);
    let tree: Value = serde_json::from_str(&posted.text().await.unwrap()).unwrap();
    assert_eq!(tree["type"], "alt");
    let (status, body) = text(
        c.post(namer.url("/api/1/delegate"))
            .header("content-type", "application/json")
            .body("{\"path\":1}")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::BAD_REQUEST, "Malformed delegation request: {\"path\":1}\n"));
    let wrong_type =
        c.post(namer.url("/api/1/delegate")).header("content-type", "text/plain").body("x").send().await.unwrap();
    assert_eq!(wrong_type.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(c.put(namer.url("/api/1/delegate")).send().await.unwrap().status(), StatusCode::METHOD_NOT_ALLOWED);
    namer.stop().await;
}

#[tokio::test]
async fn bound_names_list_what_namers_know_and_what_is_bound() {
    let dir = tempfile::tempdir().unwrap();
    let namer = namer_with_fs(dir.path()).await;
    let c = client();
    assert_eq!(c.get(namer.url("/api/1/bound-names")).send().await.unwrap().text().await.unwrap(), "[]\n");
    let mut names = Lines::new(c.get(namer.url("/api/1/bound-names?watch=true")).send().await.unwrap());
    assert_eq!(names.next().await, "[]");
    std::fs::write(dir.path().join("web"), "127.0.0.1 1\n").unwrap();
    assert_eq!(names.next().await, "[\"/#/io.l5d.fs/web\"]");

    put_text(&namer, "default", "/svc=>/#/io.l5d.fs").await;
    let _bound = c.get(namer.url("/api/1/bind/default?path=/svc/web")).send().await.unwrap();
    let active = c.get(namer.url("/api/1/bound-names/default")).send().await.unwrap().text().await.unwrap();
    assert_eq!(active, "[\"/svc/web\"]\n");
    namer.stop().await;
}

#[tokio::test]
async fn metrics_and_readiness_on_the_admin_port() {
    let namer = common::start("{}").await;
    let c = client();
    put_text(&namer, "default", "/a=>/b").await;
    c.get(namer.url("/api/1/dtabs/nope")).send().await.unwrap();
    let admin = |path: &str| format!("http://{}{path}", namer.admin);
    assert_eq!(c.get(admin("/ready")).send().await.unwrap().text().await.unwrap(), "ready\n");
    assert_eq!(c.get(admin("/live")).send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(c.get(admin("/admin/ping")).send().await.unwrap().text().await.unwrap(), "pong");
    // namerd's dashboard delegator, on the admin port.
    let delegated = c
        .post(admin("/dtab/delegator.json"))
        .header("content-type", "application/json")
        .body(r#"{"namespace":"default","dtab":"/b=>/$/nil","path":"/a"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(delegated.status(), StatusCode::OK);
    let tree: serde_json::Value = serde_json::from_str(&delegated.text().await.unwrap()).unwrap();
    assert_eq!(tree["path"], "/a");
    assert_eq!(tree["delegate"]["dentry"]["prefix"], "/a", "{tree}");
    assert_eq!(tree["delegate"]["delegate"]["type"], "empty", "the request's dtab applies: {tree}");
    let by_query = c.get(admin("/dtab/delegator.json?namespace=default&path=/a")).send().await.unwrap();
    let tree: serde_json::Value = serde_json::from_str(&by_query.text().await.unwrap()).unwrap();
    assert_eq!(tree["delegate"]["path"], "/b", "{tree}");
    assert_eq!(c.get(admin("/bound-names.json")).send().await.unwrap().text().await.unwrap(), "[]\n");
    let prometheus = c.get(admin("/admin/metrics/prometheus")).send().await.unwrap().text().await.unwrap();
    assert!(prometheus.contains("waymark_namer_store_available 1"), "{prometheus}");
    let metrics = c.get(admin("/metrics")).send().await.unwrap().text().await.unwrap();
    for expected in [
        "waymark_namer_http_requests_total{api=\"dtab\",status=\"204\"} 1",
        "waymark_namer_http_requests_total{api=\"dtab\",status=\"404\"} 1",
        "waymark_namer_store_available 1",
        "waymark_namer_interpreter_bind_duration_seconds",
    ] {
        assert!(metrics.contains(expected), "missing {expected} in\n{metrics}");
    }
    namer.stop().await;
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
