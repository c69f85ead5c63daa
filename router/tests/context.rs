//! What a request carries from hop to hop besides its dtab: Linkerd 1's trace, deadline,
//! `Via` and success class, through real routers and sockets.

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::StatusCode;
use support::*;

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64
}

/// `l5d-ctx-trace` as Finagle lays it out: span, parent, trace, flags.
fn trace_header(words: [u64; 4]) -> String {
    STANDARD.encode(words.iter().flat_map(|w| w.to_be_bytes()).collect::<Vec<u8>>())
}

fn trace_words(header: &str) -> [u64; 4] {
    let bytes = STANDARD.decode(header).unwrap();
    assert_eq!(bytes.len(), 32, "{header}");
    std::array::from_fn(|i| u64::from_be_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap()))
}

/// `(timestamp_ns, deadline_ns)` of an `l5d-ctx-deadline`.
fn deadline(header: &str) -> (i64, i64) {
    let (timestamp, deadline) = header.split_once(' ').unwrap();
    (timestamp.parse().unwrap(), deadline.parse().unwrap())
}

#[tokio::test]
async fn trace_deadline_and_via_cross_two_router_hops() {
    let web = upstream("web").await;
    let second = router(config(""), TestResolver::new(&format!("/svc/web => {}", web.id()))).await;
    let to_second = format!("/svc/web => /$/inet/127.0.0.1/{}", second.addr().port());
    let first = router(config("service:\n  total_timeout_ms: 5000\n"), TestResolver::new(&to_second)).await;
    let client = h1();

    // A request from outside any trace starts one at the first hop.
    let before = now_ns();
    let got = get(&client, first.addr(), "web", &[]).await;
    let after = now_ns();
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    let [span, parent, trace, flags] = trace_words(&got.seen("l5d-ctx-trace").unwrap());
    assert_eq!(parent, trace, "the second hop's span is a child of the root span the first hop made");
    assert_ne!(span, trace);
    assert_eq!(flags, 0, "no sampling decision was made");
    assert_eq!(got.seen("l5d-reqid"), Some(format!("{trace:016x}")));
    assert_eq!(got.seen("via").as_deref(), Some("1.1 waymark, 1.1 waymark"));
    // The first hop's total timeout became the deadline, which the second passed on as it was.
    let (timestamp, due) = deadline(&got.seen("l5d-ctx-deadline").unwrap());
    assert!((before..=after).contains(&timestamp), "{before} <= {timestamp} <= {after}");
    assert_eq!(due - timestamp, 5_000_000_000);

    // A request in a caller's trace stays in it, with its sampling decision, one span deeper
    // at each hop; the request id is the trace id on every hop.
    let caller = [0x1111, 0x2222, 0xabcdef, 6];
    let got = get(&client, first.addr(), "web", &[("l5d-ctx-trace", &trace_header(caller))]).await;
    let [span, parent, trace, flags] = trace_words(&got.seen("l5d-ctx-trace").unwrap());
    assert_eq!((trace, flags), (0xabcdef, 6));
    assert!(![0x1111, 0x2222, 0xabcdef].contains(&parent), "the parent is the first hop's own span");
    assert_ne!(span, parent);
    assert_eq!(got.seen("l5d-reqid").as_deref(), Some("0000000000abcdef"));

    // l5d-sample decides an undecided trace.
    let got = get(&client, first.addr(), "web", &[("l5d-sample", "1.0")]).await;
    assert_eq!(trace_words(&got.seen("l5d-ctx-trace").unwrap())[3], 6, "sampling known, sampled");
    assert_eq!(got.seen("l5d-sample"), None, "l5d-sample is read, not forwarded");

    // A malformed trace is ignored, not refused.
    let got = get(&client, first.addr(), "web", &[("l5d-ctx-trace", "not a trace")]).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(trace_words(&got.seen("l5d-ctx-trace").unwrap())[3], 0);
}

#[tokio::test]
async fn a_callers_deadline_bounds_the_hop_and_is_passed_on() {
    let web = upstream("web").await;
    let dtab = format!("/svc/web => {}", web.id());
    let router = router(config(""), TestResolver::new(&dtab)).await;
    let client = h1();

    // Passed on as it came when this hop has no total timeout of its own.
    let far = format!("{} {}", now_ns(), now_ns() + 60_000_000_000);
    let got = get(&client, router.addr(), "web", &[("l5d-ctx-deadline", &far)]).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.seen("l5d-ctx-deadline"), Some(far.clone()));

    // A request that outlives its caller's deadline is answered for the caller, who stops
    // waiting then anyway.
    let near = format!("{} {}", now_ns(), now_ns() + 300_000_000);
    let slow = get(&client, router.addr(), "web", &[("l5d-ctx-deadline", &near), ("x-delay-ms", "10000")]).await;
    assert_eq!(slow.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(slow.text().contains("exceeded the caller's deadline (l5d-ctx-deadline) for /svc/web"), "{}", slow.text());
    assert!(slow.headers.contains_key("l5d-err"));

    // One already past is answered at once, without troubling the service.
    let hits = web.hits.load(std::sync::atomic::Ordering::SeqCst);
    let past = format!("{} {}", now_ns() - 2_000_000_000, now_ns() - 1_000_000_000);
    let late = get(&client, router.addr(), "web", &[("l5d-ctx-deadline", &past)]).await;
    assert_eq!(late.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(late.text().contains("0 ms were left when the request arrived"), "{}", late.text());
    assert_eq!(web.hits.load(std::sync::atomic::Ordering::SeqCst), hits);

    // With a total timeout of its own, the stricter deadline goes on.
    let strict = router_for(&dtab, "service:\n  total_timeout_ms: 1000\n").await;
    let got = get(&client, strict.addr(), "web", &[("l5d-ctx-deadline", &far)]).await;
    let (timestamp, due) = deadline(&got.seen("l5d-ctx-deadline").unwrap());
    assert_eq!(due - timestamp, 1_000_000_000, "this hop's own second, not the caller's minute");

    // Told not to enforce it, a router only passes the deadline on, as Linkerd 1 does.
    let lenient = router_for(&dtab, "service:\n  enforce_deadline: false\n").await;
    let got = get(&client, lenient.addr(), "web", &[("l5d-ctx-deadline", &past)]).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert_eq!(got.seen("l5d-ctx-deadline"), Some(past));
}

async fn router_for(dtab: &str, extra: &str) -> Router {
    router(config(extra), TestResolver::new(dtab)).await
}

#[tokio::test]
async fn a_routing_loop_ends_at_the_call_depth_limit_before_any_header_limit() {
    let web = upstream("web").await;
    let resolver = TestResolver::new("/svc => /$/nil");
    // Two listeners of one router, each sending the name to the other: a loop no single hop
    // can see. The default limit must stop it, not a server's limit on headers.
    let yaml = "listeners:\n  - port: 0\n    name: out\n    dst_prefix: /out\n  - port: 0\n    name: in\n    dst_prefix: /in\n";
    let router = router(config(yaml), resolver.clone()).await;
    let (out, inbound) = (router.addrs[0], router.addrs[1]);
    resolver.set_dtab(&format!(
        "/out/loop => /$/inet/127.0.0.1/{}; /in/loop => /$/inet/127.0.0.1/{}; /out/web => {}",
        inbound.port(),
        out.port(),
        web.id()
    ));
    let client = h1();
    let looped = get(&client, out, "loop", &[]).await;
    assert_eq!(looped.status, StatusCode::BAD_REQUEST, "{}", looped.text());
    assert!(
        looped.text().contains("the request has passed 101 proxies (by its Via header), more than the limit of 100"),
        "{}",
        looped.text()
    );
    assert!(looped.headers.contains_key("l5d-err"));
    // Refused once, by the hop that found the loop; the hops before it passed the 400 back.
    let (_, metrics) = admin_get(router.admin, "/metrics").await;
    let refused = |listener: &str| {
        metric(&metrics, &format!(r#"router_refused_requests_total{{listener="{listener}",reason="call_depth"}}"#))
    };
    assert_eq!(refused("out").unwrap_or(0.0) + refused("in").unwrap_or(0.0), 1.0, "{metrics}");
    // Everything else is served.
    let got = get(&client, out, "web", &[]).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.seen("via").as_deref(), Some("1.1 waymark"));
}

#[tokio::test]
async fn a_router_sent_to_its_own_listener_refuses_without_a_hop() {
    let web = upstream("web").await;
    let resolver = TestResolver::new(&format!("/svc/web => {}", web.id()));
    let router = router(config(""), resolver).await;
    let override_ = format!("/svc/web => /$/inet/127.0.0.1/{}", router.addr().port());
    let client = h1();
    let looped = get(&client, router.addr(), "web", &[("l5d-dtab", &override_)]).await;
    assert_eq!(looped.status, StatusCode::BAD_GATEWAY, "{}", looped.text());
    assert!(looped.text().contains("this router's own listener"), "{}", looped.text());
    let (_, metrics) = admin_get(router.admin, "/metrics").await;
    let accepted = metric(&metrics, r#"router_server_accepted_connections_total{listener="outbound"}"#);
    assert_eq!(accepted, Some(1.0), "the router never connected to itself: {metrics}");
    assert_eq!(get(&client, router.addr(), "web", &[]).await.status, StatusCode::OK);
}

#[tokio::test]
async fn the_success_class_is_written_for_earlier_routers_and_honoured_from_later_ones() {
    let web = upstream("web").await;
    let router = router(config(""), TestResolver::new(&format!("/svc/web => {}", web.id()))).await;
    let client = h1();
    let class = |got: &Got| got.headers.get("l5d-success-class").map(|v| v.to_str().unwrap().to_string());

    let ok = get(&client, router.addr(), "web", &[]).await;
    assert_eq!(class(&ok).as_deref(), Some("1.0"));
    let failed = get(&client, router.addr(), "web", &[("x-status", "500")]).await;
    assert_eq!(class(&failed).as_deref(), Some("0.0"));
    let unbound = get(&client, router.addr(), "nowhere", &[]).await;
    assert_eq!((unbound.status, class(&unbound).as_deref()), (StatusCode::BAD_GATEWAY, Some("0.0")));

    // A router nearer the service counted this 500 as a success: so does this one.
    let forgiven =
        get(&client, router.addr(), "web", &[("x-status", "500"), ("x-respond-with", "l5d-success-class=1.0")]).await;
    assert_eq!((forgiven.status, class(&forgiven).as_deref()), (StatusCode::INTERNAL_SERVER_ERROR, Some("1.0")));
    // And the other way round: a 200 it counted a failure. A value that is not a number is a failure too.
    get(&client, router.addr(), "web", &[("x-respond-with", "l5d-success-class=0.0")]).await;
    get(&client, router.addr(), "web", &[("x-respond-with", "l5d-success-class=oops")]).await;

    let (_, metrics) = admin_get(router.admin, "/metrics").await;
    let line = |status: &str, class: &str| {
        let series = format!(
            r#"router_service_responses_total{{service="/svc/web",status_class="{status}",classification="{class}"}}"#
        );
        metric(&metrics, &series)
    };
    assert_eq!(line("2xx", "success"), Some(1.0), "{metrics}");
    assert_eq!(line("2xx", "failure"), Some(2.0), "{metrics}");
    assert_eq!(line("5xx", "success"), Some(1.0), "{metrics}");
    assert_eq!(line("5xx", "failure"), Some(1.0), "{metrics}");
}
