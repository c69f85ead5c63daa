//! The router end to end: real sockets, real upstream servers, a router started in-process.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use waymark_dtab::Addr;

#[tokio::test]
async fn http1_routes_by_host_and_adds_linkerd_headers() {
    let web = upstream("web").await;
    let resolver = TestResolver::new(&format!("/svc/web => {}", web.id()));
    let router = router(config(""), resolver).await;
    let got = get(&h1(), router.addr(), "web:8080", &[("l5d-dst-service", "/forged")]).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert_eq!(got.upstream(), "web");
    assert_eq!(got.json()["version"], "HTTP/1.1");
    assert_eq!(got.seen("l5d-dst-service").as_deref(), Some("/svc/web"));
    assert_eq!(got.seen("l5d-dst-client"), Some(web.id()));
    assert_eq!(got.seen("host").as_deref(), Some("web:8080"), "the destination sees the name it was called by");
    assert!(got.seen("l5d-reqid").is_some_and(|id| id.len() == 16));
    assert_eq!(got.seen("l5d-ctx-dtab"), None, "no override, no context");
    let unknown = get(&h1(), router.addr(), "nowhere", &[]).await;
    assert_eq!(unknown.status, StatusCode::BAD_GATEWAY);
    let err = unknown.headers["l5d-err"].to_str().unwrap();
    assert!(err.contains("%2Fsvc%2Fnowhere"), "{err}");
    let body = unknown.text();
    assert!(body.contains("logical name: /svc/nowhere") && body.contains("base dtab:"), "{body}");
}

#[tokio::test]
async fn bodies_stream_through_in_both_directions() {
    let web = upstream("web").await;
    let resolver = TestResolver::new(&format!("/svc/web => {}", web.id()));
    let router = router(config(""), resolver).await;
    let payload = Bytes::from(vec![b'x'; 3 * 1024 * 1024]);
    let req = Request::post(format!("http://{}/upload", router.addr()))
        .header("host", "web")
        .body(Full::new(payload.clone()))
        .unwrap();
    let got = send(&h1(), req).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.json()["body_len"], payload.len());
}

#[tokio::test]
async fn l5d_dtab_sends_one_request_to_the_canary_and_is_carried_as_context() {
    let (stable, canary) = (upstream("stable").await, upstream("canary").await);
    let dtab = format!("/srv/stable => {}; /srv/canary => {}; /svc/web => /srv/stable", stable.id(), canary.id());
    let router = router(config(""), TestResolver::new(&dtab)).await;
    let client = h1();
    assert_eq!(get(&client, router.addr(), "web", &[]).await.upstream(), "stable");
    let got = get(&client, router.addr(), "web", &[("l5d-dtab", "/svc/web => /srv/canary")]).await;
    assert_eq!(got.upstream(), "canary");
    assert_eq!(got.seen("l5d-ctx-dtab").as_deref(), Some("/svc/web=>/srv/canary"));
    assert_eq!(got.seen("l5d-dtab"), None, "l5d-dtab is consumed");
    // l5d-dtab wins over an incoming l5d-ctx-dtab.
    let got = get(
        &client,
        router.addr(),
        "web",
        &[("l5d-ctx-dtab", "/svc/web => /srv/canary"), ("l5d-dtab", "/svc/web => /srv/stable")],
    )
    .await;
    assert_eq!(got.upstream(), "stable");
    assert_eq!(got.seen("l5d-ctx-dtab").as_deref(), Some("/svc/web=>/srv/canary;/svc/web=>/srv/stable"));
}

#[tokio::test]
async fn an_override_follows_the_request_over_two_router_hops() {
    let (stable, canary) = (upstream("stable").await, upstream("canary").await);
    let second_dtab =
        format!("/srv/stable => {}; /srv/canary => {}; /svc/web => /srv/stable", stable.id(), canary.id());
    let second = router(config(""), TestResolver::new(&second_dtab)).await;
    let first_dtab = format!("/svc/web => /$/inet/127.0.0.1/{}", second.addr().port());
    let first = router(config(""), TestResolver::new(&first_dtab)).await;
    let client = h1();
    assert_eq!(get(&client, first.addr(), "web", &[]).await.upstream(), "stable");
    // The first hop does not use /srv; the second does, through l5d-ctx-dtab.
    let got = get(&client, first.addr(), "web", &[("l5d-dtab", "/srv/stable => /srv/canary")]).await;
    assert_eq!(got.upstream(), "canary");
    assert_eq!(got.seen("l5d-ctx-dtab").as_deref(), Some("/srv/stable=>/srv/canary"));
}

#[tokio::test]
async fn an_untrusted_listener_strips_l5d_headers_both_ways_and_hides_error_details() {
    let (stable, canary) = (upstream("stable").await, upstream("canary").await);
    let dtab = format!("/srv/stable => {}; /srv/canary => {}; /svc/web => /srv/stable", stable.id(), canary.id());
    let cfg = config("listeners:\n  - name: edge\n    port: 0\n    trusted: false\n");
    let router = router(cfg, TestResolver::new(&dtab)).await;
    let client = h1();
    let got = get(
        &client,
        router.addr(),
        "web",
        &[("l5d-dtab", "/svc/web => /srv/canary"), ("l5d-ctx-dtab", "/svc/web => /srv/canary"), ("l5d-x", "y")],
    )
    .await;
    assert_eq!(got.upstream(), "stable", "an edge client cannot steer routing");
    assert_eq!(got.seen("l5d-x"), None);
    assert_eq!(got.seen("l5d-ctx-dtab"), None);
    assert!(!got.headers.keys().any(|k| k.as_str().starts_with("l5d-")), "{:?}", got.headers);
    let failed = get(&client, router.addr(), "nowhere", &[]).await;
    assert_eq!(failed.status, StatusCode::BAD_GATEWAY);
    assert!(!failed.headers.contains_key("l5d-err"));
    assert_eq!(failed.text(), "Bad Gateway\n");
}

#[tokio::test]
async fn malformed_and_oversized_overrides_are_refused() {
    let web = upstream("web").await;
    let router =
        router(config("max_override_bytes: 64\n"), TestResolver::new(&format!("/svc/web => {}", web.id()))).await;
    let client = h1();
    let bad = get(&client, router.addr(), "web", &[("l5d-dtab", "/svc/web -> /x")]).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.headers["l5d-err"].to_str().unwrap().starts_with("the+l5d-dtab+header+is+not+a+valid+dtab"));
    assert!(bad.text().contains("line 1, column 10") && bad.text().contains('^'), "{}", bad.text());
    let long = "/a=>/b;".repeat(20);
    let big = get(&client, router.addr(), "web", &[("l5d-dtab", &long)]).await;
    assert_eq!(big.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert!(big.headers.contains_key("l5d-err"));
    assert_eq!(web.hits.load(Ordering::SeqCst), 0);
    let missing = get(&client, router.addr(), "", &[]).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST, "unidentified: {}", missing.text());
    // Each refusal is counted by its reason.
    let (_, metrics) = admin_get(router.admin, "/metrics").await;
    for reason in ["bad_override", "override_too_large", "unidentified"] {
        let series = format!(r#"router_refused_requests_total{{listener="outbound",reason="{reason}"}}"#);
        assert_eq!(metric(&metrics, &series), Some(1.0), "{series} in\n{metrics}");
    }
}

#[tokio::test]
async fn union_weights_split_traffic() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let dtab = format!("/svc/web => 3 * {} & 1 * {}", a.id(), b.id());
    let router = router(config(""), TestResolver::new(&dtab)).await;
    let client = h1();
    let n = 2000;
    for _ in 0..n {
        assert_eq!(get(&client, router.addr(), "web", &[]).await.status, StatusCode::OK);
    }
    let share = a.hits.load(Ordering::SeqCst) as f64 / n as f64;
    // Binomial standard deviation is about 0.01: five of them either side.
    assert!((share - 0.75).abs() < 0.05, "a got {share}");
    assert_eq!(a.hits.load(Ordering::SeqCst) + b.hits.load(Ordering::SeqCst), n);
}

#[tokio::test]
async fn alternatives_fall_through_negative_names_and_empty_address_sets() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let dtab = format!("/svc/web => /srv/missing | {}", b.id());
    let resolver = TestResolver::new(&dtab);
    let router = router(config(""), resolver.clone()).await;
    let client = h1();
    assert_eq!(get(&client, router.addr(), "web", &[]).await.upstream(), "b", "a negative branch falls through");
    // A namer may send alternatives whose first branch has no endpoints at the moment.
    resolver.set_tree("/svc/api", &format!("{} | {}", a.id(), b.id()));
    assert_eq!(get(&client, router.addr(), "api", &[]).await.upstream(), "a");
    resolver.set_addr(&a.id(), Addr::bound([]));
    assert_eq!(get(&client, router.addr(), "api", &[]).await.upstream(), "b", "no endpoints falls through");
    resolver.set_addr(&a.id(), Addr::Neg);
    assert_eq!(get(&client, router.addr(), "api", &[]).await.upstream(), "b", "a negative address set too");
    resolver.set_addr(&a.id(), Addr::bound([a.addr]));
    assert_eq!(get(&client, router.addr(), "api", &[]).await.upstream(), "a");
    resolver.set_tree("/svc/gone", &format!("~ | {}", a.id()));
    resolver.set_tree("/svc/failed", &format!("! | {}", a.id()));
    assert_eq!(get(&client, router.addr(), "gone", &[]).await.upstream(), "a");
    let failed = get(&client, router.addr(), "failed", &[]).await;
    assert_eq!(failed.status, StatusCode::BAD_GATEWAY, "a failure stops fall-through");
}

#[tokio::test]
async fn failure_accrual_takes_a_failing_endpoint_out() {
    let (good, bad) = (upstream("good").await, upstream("bad").await);
    bad.fail_with.store(500, Ordering::SeqCst);
    // Failing fast makes the bad endpoint look like the better one to the balancer, the
    // case failure accrual exists for.
    good.delay_ms.store(5, Ordering::SeqCst);
    let resolver = TestResolver::new("/svc/web => /$/inet/pool/80");
    let both = Addr::bound([good.addr, bad.addr]);
    // /$/inet/pool/80 is a host name: the test resolver knows it only as we say.
    resolver.set_addr("/$/inet/pool/80", both);
    let cfg = config(
        "client:\n  failure_accrual:\n    kind: consecutive_failures\n    failures: 3\n    min_backoff_ms: 600000\n    max_backoff_ms: 600000\n",
    );
    let router = router(cfg, resolver).await;
    let client = h1();
    for _ in 0..200 {
        get(&client, router.addr(), "web", &[]).await;
    }
    assert_eq!(bad.hits.load(Ordering::SeqCst), 3, "out after three failures in a row");
    assert_eq!(good.hits.load(Ordering::SeqCst), 197);
}

#[tokio::test]
async fn retries_go_elsewhere_and_stop_when_the_budget_is_spent() {
    let (good, bad) = (upstream("good").await, upstream("bad").await);
    bad.fail_with.store(503, Ordering::SeqCst);
    let resolver = TestResolver::new("/svc/web => /$/inet/pool/80; /svc/down => /$/inet/down/80");
    resolver.set_addr("/$/inet/pool/80", Addr::bound([good.addr, bad.addr]));
    let down = upstream("down").await;
    down.fail_with.store(503, Ordering::SeqCst);
    resolver.set_addr("/$/inet/down/80", Addr::bound([down.addr]));
    let cfg = config(
        "client:\n  failure_accrual:\n    kind: consecutive_failures\n    failures: 1\n    min_backoff_ms: 600000\n    max_backoff_ms: 600000\n\
service:\n  response_classifier:\n    kind: retryable_read_5xx\n  retries:\n    max_per_request: 3\n    budget:\n      min_retries_per_sec: 1\n      percent_can_retry: 0.0\n      ttl_secs: 10\n",
    );
    let router = router(cfg, resolver).await;
    let client = h1();
    for _ in 0..20 {
        assert_eq!(get(&client, router.addr(), "web", &[]).await.status, StatusCode::OK);
    }
    assert!(bad.hits.load(Ordering::SeqCst) <= 1, "a failed read is retried on the other endpoint");
    // A service that always fails: the budget (1/s over 10 s, nothing per request) runs out.
    let mut statuses = Vec::new();
    for _ in 0..30 {
        statuses.push(get(&client, router.addr(), "down", &[]).await.status);
    }
    assert!(statuses.iter().all(|s| *s == StatusCode::SERVICE_UNAVAILABLE));
    // Budgets are per logical name: /svc/down has its own reserve of 10.
    assert_eq!(down.hits.load(Ordering::SeqCst), 30 + 10);
    let (_, metrics) = admin_get(router.admin, "/metrics").await;
    let exhausted = metric(&metrics, r#"router_service_retry_budget_exhausted_total{service="/svc/down"}"#).unwrap();
    assert!(exhausted >= 20.0, "{metrics}");
    // POST is not a read: never retried.
    let before = down.hits.load(Ordering::SeqCst);
    let post = Request::post(format!("http://{}/", router.addr())).header("host", "down").body(Full::new(Bytes::new()));
    send(&client, post.unwrap()).await;
    assert_eq!(down.hits.load(Ordering::SeqCst), before + 1);
}

#[tokio::test]
async fn small_bodies_are_kept_and_sent_again_large_ones_stream_and_are_not() {
    let (good, bad) = (upstream("good").await, upstream("bad").await);
    let (good_big, bad_big) = (upstream("good-big").await, upstream("bad-big").await);
    bad.fail_with.store(503, Ordering::SeqCst);
    bad_big.fail_with.store(503, Ordering::SeqCst);
    let resolver = TestResolver::new("/svc/small => /$/inet/pool/80; /svc/big => /$/inet/bigpool/80");
    resolver.set_addr("/$/inet/pool/80", Addr::bound([good.addr, bad.addr]));
    resolver.set_addr("/$/inet/bigpool/80", Addr::bound([good_big.addr, bad_big.addr]));
    // Every 5xx may be retried; one failure takes an endpoint out for good, so that a retry
    // goes to the other endpoint.
    let cfg = config(
        "client:\n  failure_accrual:\n    kind: consecutive_failures\n    failures: 1\n    min_backoff_ms: 600000\n    max_backoff_ms: 600000\n\
service:\n  response_classifier:\n    kind: retryable_all_5xx\n  retries:\n    max_replay_body_bytes: 1024\n",
    );
    let router = router(cfg, resolver).await;
    let client = h1();
    let post = |host: &str, len: usize| {
        Request::post(format!("http://{}/", router.addr()))
            .header("host", host)
            .header("content-length", len.to_string())
            .body(Full::new(Bytes::from(vec![b'x'; len])))
            .unwrap()
    };
    // Small: read whole, so the POST that met the bad endpoint's 503 is sent again, whole.
    for _ in 0..10 {
        let got = send(&client, post("small", 1000)).await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.text());
        assert_eq!((got.json()["upstream"].as_str(), got.json()["body_len"].as_u64()), (Some("good"), Some(1000)));
    }
    assert_eq!(bad.hits.load(Ordering::SeqCst), 1, "the bad endpoint was tried once, then retried elsewhere");
    // Large: streamed, so the 503 from the bad endpoint comes back as it is.
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(send(&client, post("big", 4000)).await.status);
    }
    assert_eq!(bad_big.hits.load(Ordering::SeqCst), 1);
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::SERVICE_UNAVAILABLE).count(), 1, "{statuses:?}");
}

#[tokio::test]
async fn timeouts_answer_503() {
    let web = upstream("web").await;
    let resolver = TestResolver::new(&format!("/svc/web => {}", web.id()));
    let cfg = config("binding_timeout_ms: 200\nservice:\n  total_timeout_ms: 300\n");
    let router = router(cfg, resolver.clone()).await;
    let client = h1();
    let slow = get(&client, router.addr(), "web", &[("x-delay-ms", "5000")]).await;
    assert_eq!(slow.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(slow.text().contains("total timeout"), "{}", slow.text());
    assert_eq!(get(&client, router.addr(), "web", &[]).await.status, StatusCode::OK);
    resolver.pending.store(true, Ordering::SeqCst);
    let unbound = get(&client, router.addr(), "other", &[]).await;
    assert_eq!(unbound.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(unbound.text().contains("binding timeout"), "{}", unbound.text());
}

#[tokio::test]
async fn a_pending_binding_serves_as_soon_as_it_resolves() {
    let web = upstream("web").await;
    let resolver = TestResolver::new(&format!("/svc/web => {}", web.id()));
    resolver.pending.store(true, Ordering::SeqCst);
    let router = router(config("binding_timeout_ms: 30000\n"), resolver.clone()).await;
    let addr = router.addr();
    let waiting = tokio::spawn(async move { get(&h1(), addr, "web", &[]).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    resolver.pending.store(false, Ordering::SeqCst);
    resolver.rebind();
    assert_eq!(waiting.await.unwrap().upstream(), "web");
}

#[tokio::test]
async fn endpoint_changes_under_load_fail_no_request() {
    let servers = [upstream("a").await, upstream("b").await, upstream("c").await];
    let resolver = TestResolver::new("/svc/web => /$/inet/pool/80");
    resolver.set_addr("/$/inet/pool/80", Addr::bound([servers[0].addr]));
    let router = router(config(""), resolver.clone()).await;
    let addr = router.addr();
    let load: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(async move {
                let client = h1();
                let mut failures = 0;
                for _ in 0..300 {
                    if get(&client, addr, "web", &[]).await.status != StatusCode::OK {
                        failures += 1;
                    }
                }
                failures
            })
        })
        .collect();
    let sets = [vec![0, 1], vec![1], vec![1, 2], vec![2, 0], vec![0]];
    for round in 0..40 {
        let set = &sets[round % sets.len()];
        resolver.set_addr("/$/inet/pool/80", Addr::bound(set.iter().map(|&i| servers[i].addr)));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut failures = 0;
    for task in load {
        failures += task.await.unwrap();
    }
    assert_eq!(failures, 0);
    assert!(servers.iter().all(|s| s.hits.load(Ordering::SeqCst) > 0));
}

#[tokio::test]
async fn websocket_style_upgrades_pass_through() {
    let web = upstream("web").await;
    let router = router(config(""), TestResolver::new(&format!("/svc/web => {}", web.id()))).await;
    let mut conn = tokio::net::TcpStream::connect(router.addr()).await.unwrap();
    conn.write_all(b"GET /ws HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 1024];
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&head));
        head.extend_from_slice(&buf[..n]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    conn.write_all(b"ping over the upgraded connection").await.unwrap();
    let mut echoed = vec![0u8; 33];
    conn.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping over the upgraded connection");
}

#[tokio::test]
async fn distinct_overrides_are_bounded_by_the_binding_cache() {
    let web = upstream("web").await;
    let cfg = config("binding_cache:\n  max_override_bindings: 10\n");
    let router = router(cfg, TestResolver::new(&format!("/svc/web => {}", web.id()))).await;
    let client = h1();
    for i in 0..100 {
        let dtab = format!("/x{i} => /y");
        assert_eq!(get(&client, router.addr(), "web", &[("l5d-dtab", &dtab)]).await.status, StatusCode::OK);
    }
    let (_, metrics) = admin_get(router.admin, "/metrics").await;
    let bindings = metric(&metrics, "router_override_bindings ").unwrap();
    assert!(bindings <= 10.0, "{bindings}");
}

#[tokio::test]
async fn concurrent_new_overrides_beyond_twice_the_limit_are_refused_and_plain_traffic_is_not() {
    let web = upstream("web").await;
    let resolver = TestResolver::new(&format!("/svc/web => {}", web.id()));
    let cfg = config("binding_timeout_ms: 3000\nbinding_cache:\n  max_override_bindings: 5\n");
    let router = router(cfg, resolver.clone()).await;
    assert_eq!(get(&h1(), router.addr(), "web", &[]).await.status, StatusCode::OK);
    // Bindings made from now on stay pending, so every request below holds its binding.
    resolver.pending.store(true, Ordering::SeqCst);
    let addr = router.addr();
    let requests: Vec<_> = (0..30)
        .map(|i| {
            tokio::spawn(async move {
                let dtab = format!("/x{i} => /y");
                get(&h1(), addr, "web", &[("l5d-dtab", &dtab)]).await
            })
        })
        .collect();
    let mut refused = 0;
    for request in requests {
        let got = request.await.unwrap();
        if got.status == StatusCode::SERVICE_UNAVAILABLE && got.text().contains("too many distinct dtab overrides") {
            refused += 1;
        } else {
            assert!(got.text().contains("binding timeout"), "{}: {}", got.status, got.text());
        }
    }
    assert_eq!(refused, 20, "at most twice the limit of 5 exist at once");
    // The plain binding is untouched, and served throughout.
    assert_eq!(get(&h1(), addr, "web", &[]).await.status, StatusCode::OK);
    let (_, metrics) = admin_get(router.admin, "/metrics").await;
    let series = r#"router_refused_requests_total{listener="outbound",reason="overrides_busy"}"#;
    assert_eq!(metric(&metrics, series), Some(20.0), "{metrics}");
}

#[tokio::test]
async fn admin_reports_metrics_readiness_and_namer_state() {
    let web = upstream("web").await;
    let resolver = TestResolver::new(&format!("/svc/web => {}", web.id()));
    let (naming, status) = naming_with_status(resolver);
    let router = router_with(config(""), naming).await;
    let client = h1();
    get(&client, router.addr(), "web", &[]).await;
    let (code, metrics) = admin_get(router.admin, "/metrics").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(metric(&metrics, r#"router_service_requests_total{service="/svc/web"}"#), Some(1.0), "{metrics}");
    let client_line = format!(
        r#"router_client_responses_total{{client="{}",status_class="2xx",classification="success"}}"#,
        web.id()
    );
    assert_eq!(metric(&metrics, &client_line), Some(1.0), "{metrics}");
    assert_eq!(metric(&metrics, r#"router_client_endpoints{client=""#), Some(1.0));
    assert_eq!(metric(&metrics, "router_namer_connected "), Some(1.0));
    assert_eq!(metric(&metrics, r#"router_dtab_version{namespace="default",version="1"}"#), Some(1.0), "{metrics}");
    assert!(metrics.contains("router_service_request_latency_seconds_bucket"));
    let (code, linkerd_named) = admin_get(router.admin, "/admin/metrics/prometheus").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(metric(&linkerd_named, r#"router_service_requests_total{service="/svc/web"}"#), Some(1.0));
    assert_eq!(admin_get(router.admin, "/live").await.0, StatusCode::OK);
    let (code, ready) = admin_get(router.admin, "/ready").await;
    assert_eq!((code, ready.starts_with("ready\n")), (StatusCode::OK, true), "{ready}");

    // The namer goes away: requests are still served from the last known state.
    status.send_modify(|s| s.reachable = false);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(get(&client, router.addr(), "web", &[]).await.upstream(), "web");
    let (code, ready) = admin_get(router.admin, "/ready").await;
    assert_eq!(code, StatusCode::OK);
    assert!(ready.contains("namer unreachable"), "{ready}");
    let (_, metrics) = admin_get(router.admin, "/metrics").await;
    assert_eq!(metric(&metrics, "router_namer_connected "), Some(0.0));
}

#[tokio::test]
async fn shutdown_drains_requests_in_flight() {
    let web = upstream("web").await;
    let mut router = router(config(""), TestResolver::new(&format!("/svc/web => {}", web.id()))).await;
    let addr = router.addr();
    let slow = tokio::spawn(async move { get(&h1(), addr, "web", &[("x-delay-ms", "300")]).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    router.shutdown();
    assert_eq!(slow.await.unwrap().status, StatusCode::OK, "the request in flight finishes");
    (&mut router.task).await.unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "no longer accepting");
}

#[tokio::test]
async fn standalone_mode_routes_and_delegates_with_its_own_dtab() {
    let web = upstream("web").await;
    let yaml = format!(
        "admin:\n  port: 0\nlisteners:\n  - port: 0\ninterpreter:\n  kind: standalone\n  dtab: |\n    /svc => /#/io.l5d.static;\n    /svc/web => {}\n  namers:\n    - kind: io.l5d.static\n      prefix: /io.l5d.static\n      names: {{}}\n",
        web.id()
    );
    let app = waymark_router::App::build(waymark_router::RouterConfig::from_yaml(&yaml).unwrap()).await;
    let app = match app {
        Ok(app) => app,
        Err(e) => panic!("{e}"),
    };
    let (addr, admin) = (app.listener_addrs()[0], app.admin_addr());
    let task = tokio::spawn(app.run(std::future::pending()));
    assert_eq!(get(&h1(), addr, "web", &[]).await.upstream(), "web");
    let (code, tree) = admin_get(admin, "/delegator.json?path=%2Fsvc%2Fweb").await;
    assert_eq!(code, StatusCode::OK, "{tree}");
    let tree: serde_json::Value = serde_json::from_str(&tree).unwrap();
    assert_eq!(tree["type"], "alt", "{tree}");
    assert!(tree.to_string().contains(&web.id()), "{tree}");
    task.abort();
}

#[tokio::test]
async fn an_upstream_routers_retryable_failure_is_retried_by_the_router_before_it() {
    // Nothing listens here: connections are refused, which is always safe to retry.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let second = router(
        config("service:\n  retries:\n    max_per_request: 1\n"),
        TestResolver::new(&format!("/svc/web => /$/inet/127.0.0.1/{}", dead.port())),
    )
    .await;
    let first = router(
        config("service:\n  retries:\n    max_per_request: 2\n"),
        TestResolver::new(&format!("/svc/web => /$/inet/127.0.0.1/{}", second.addr().port())),
    )
    .await;
    let got = get(&h1(), first.addr(), "web", &[]).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert_eq!(got.headers.get("l5d-retryable").map(|v| v.to_str().unwrap()), Some("true"));
    assert!(got.text().contains("connection to"), "{}", got.text());
    // The default classifier never retries a 502 by itself: l5d-retryable made the difference.
    let (_, metrics) = admin_get(first.admin, "/metrics").await;
    assert_eq!(metric(&metrics, r#"router_service_retries_total{service="/svc/web"}"#), Some(2.0), "{metrics}");
}
