//! The `io.l5d.k8s` namers in a namer, through the real `kube` client against the fake API
//! server: EndpointSlices reaching `StreamReplicas` streams, ports by name and number, late
//! services, pods' service accounts and identities, shared and idle watches, and a fake that
//! closes watches, compacts its history, stops and restarts.
//!
//! The objects are written into the fake as the cluster's controllers would leave them (the
//! fake runs no controllers). One fake serves the binary, each test in its own namespaces;
//! tests that stop or compact the fake start their own.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::Namer;
use serde_json::{Value, json};
use tonic::transport::Channel;
use waymark_dtab::{Addr, BoundLeaf, NameTree, Path};
use waymark_proto::mesh::{self, interpreter_client::InterpreterClient, resolver_client::ResolverClient};
use waymark_proto::request::{BindRequest, replicas_req};
use waymark_test_support::kube::{FakeApiServer, RequestFilter};

/// Generous: the machine is shared.
const DEADLINE: Duration = Duration::from_secs(60);

fn p(s: &str) -> Path {
    s.parse().unwrap()
}

fn create_namespace(fake: &FakeApiServer, name: &str) {
    fake.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})).unwrap();
}

/// A Service with these ports, as `kubectl apply` would leave it.
fn put_service(fake: &FakeApiServer, ns: &str, name: &str, ports: Value) {
    fake.put(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name, "version": "v1"}},
        "spec": {"selector": {"app": name}, "ports": ports}}))
        .unwrap();
}

/// An EndpointSlice of `service`, as the EndpointSlice controller would write it.
fn put_slice(fake: &FakeApiServer, ns: &str, service: &str, name: &str, family: &str, ports: Value, endpoints: Value) {
    fake.put(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": service}},
        "addressType": family, "ports": ports, "endpoints": endpoints}))
        .unwrap();
}

fn delete_slice(fake: &FakeApiServer, ns: &str, name: &str) {
    let status = fake
        .kubectl()
        .args(["delete", "endpointslice", name, "-n", ns, "--wait=false"])
        .output()
        .expect("kubectl runs");
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
}

fn ready(ip: &str, ready: bool) -> Value {
    json!({"addresses": [ip], "conditions": {"ready": ready}, "nodeName": "node-a", "zone": "zone-1"})
}

/// A namer with the `io.l5d.k8s` namer on `fake`, short idle periods, and more namers.
async fn namer_on(fake: &FakeApiServer, extra: &str) -> Namer {
    let kubeconfig = fake.kubeconfig_path().display();
    common::start(&format!(
        "namers:\n  - kind: io.l5d.k8s\n    kubeconfig: {kubeconfig}\n    idle_ttl_secs: 1\n    trust_domain: example.org\n{extra}interpreter:\n  idle_ttl_secs: 1\n"
    ))
    .await
}

async fn channel(namer: &Namer) -> Channel {
    Channel::from_shared(format!("http://{}", namer.mesh)).unwrap().connect().await.unwrap()
}

async fn replicas(namer: &Namer, id: &str) -> tonic::Streaming<mesh::Replicas> {
    let mut client = ResolverClient::new(channel(namer).await);
    client.stream_replicas(replicas_req(&p(id))).await.unwrap().into_inner()
}

/// `ip:port` of each address, sorted.
fn endpoints(addr: &Addr) -> Option<BTreeSet<String>> {
    match addr {
        Addr::Bound { addrs, .. } => Some(addrs.iter().map(|a| a.socket_addr().to_string()).collect()),
        _ => None,
    }
}

fn set(items: &[&str]) -> Option<BTreeSet<String>> {
    Some(items.iter().map(|s| s.to_string()).collect())
}

/// Reads the stream until an address set satisfies `check`; returns it.
async fn until(stream: &mut tonic::Streaming<mesh::Replicas>, what: &str, check: impl Fn(&Addr) -> bool) -> Addr {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    loop {
        let next = tokio::time::timeout_at(deadline, stream.message()).await;
        let message = match next {
            Ok(Ok(Some(message))) => message,
            other => panic!("no address set with {what} arrived: {other:?}; saw {seen:?}"),
        };
        let addr = Addr::try_from(&message).unwrap();
        if check(&addr) {
            return addr;
        }
        seen.push(addr);
    }
}

/// Every address set the stream delivers within `wait`.
async fn delivered_within(stream: &mut tonic::Streaming<mesh::Replicas>, wait: Duration) -> Vec<Addr> {
    let mut delivered = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Ok(Some(message))) = tokio::time::timeout_at(deadline, stream.message()).await {
        delivered.push(Addr::try_from(&message).unwrap());
    }
    delivered
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn http_port() -> Value {
    json!([{"name": "http", "port": 80, "targetPort": "http", "appProtocol": "http"}])
}

fn slice_http_port(port: u16) -> Value {
    json!([{"name": "http", "port": port, "protocol": "TCP", "appProtocol": "kubernetes.io/h2c"}])
}

#[tokio::test]
async fn endpoint_slices_reach_a_replicas_stream_as_they_come_change_turn_unready_and_go() {
    let fake = FakeApiServer::shared();
    let ns = "slices-flow";
    create_namespace(fake, ns);
    put_service(fake, ns, "web", http_port());
    put_slice(
        fake,
        ns,
        "web",
        "web-a",
        "IPv4",
        slice_http_port(8080),
        json!([ready("10.0.0.1", true), ready("10.0.0.2", true)]),
    );
    let namer = namer_on(fake, "").await;
    let mut stream = replicas(&namer, &format!("/#/io.l5d.k8s/{ns}/http/web")).await;

    let first =
        until(&mut stream, "both endpoints", |a| endpoints(a) == set(&["10.0.0.1:8080", "10.0.0.2:8080"])).await;
    let Addr::Bound { addrs, .. } = &first else { unreachable!() };
    assert_eq!(addrs[0].meta["nodeName"], "node-a");
    assert_eq!(addrs[0].meta["zone"], "zone-1");
    assert_eq!(addrs[0].meta["appProtocol"], "kubernetes.io/h2c");

    // A second slice, of the other family, merges in.
    put_slice(fake, ns, "web", "web-b", "IPv6", slice_http_port(8081), json!([ready("fd00::1", true)]));
    until(&mut stream, "the IPv6 endpoint", |a| {
        endpoints(a) == set(&["10.0.0.1:8080", "10.0.0.2:8080", "[fd00::1]:8081"])
    })
    .await;
    // Changed: one endpoint not ready.
    put_slice(
        fake,
        ns,
        "web",
        "web-a",
        "IPv4",
        slice_http_port(8080),
        json!([ready("10.0.0.1", true), ready("10.0.0.2", false)]),
    );
    until(&mut stream, "the unready endpoint gone", |a| endpoints(a) == set(&["10.0.0.1:8080", "[fd00::1]:8081"]))
        .await;
    // Removed.
    delete_slice(fake, ns, "web-a");
    until(&mut stream, "the first slice gone", |a| endpoints(a) == set(&["[fd00::1]:8081"])).await;
    delete_slice(fake, ns, "web-b");
    until(&mut stream, "no endpoints", |a| endpoints(a) == set(&[])).await;
    namer.stop().await;
}

#[tokio::test]
async fn ports_are_found_by_name_or_by_number_through_the_service() {
    let fake = FakeApiServer::shared();
    let ns = "slices-ports";
    create_namespace(fake, ns);
    put_service(
        fake,
        ns,
        "web",
        json!([
            {"name": "http", "port": 80, "targetPort": "web-http"},
            {"name": "admin", "port": 9990, "targetPort": 9991}
        ]),
    );
    // The named target port is 8080 on these pods; the slice carries the number.
    put_slice(
        fake,
        ns,
        "web",
        "web-a",
        "IPv4",
        json!([{"name": "http", "port": 8080}, {"name": "admin", "port": 9991}]),
        json!([ready("10.1.0.1", true)]),
    );
    let namer = namer_on(fake, "").await;
    for (id, want) in [
        ("http", "10.1.0.1:8080"),
        ("80", "10.1.0.1:8080"),
        ("admin", "10.1.0.1:9991"),
        ("9990", "10.1.0.1:9991"),
        ("HTTP", "10.1.0.1:8080"),
    ] {
        let mut stream = replicas(&namer, &format!("/#/io.l5d.k8s/{ns}/{id}/web")).await;
        until(&mut stream, want, |a| endpoints(a) == set(&[want])).await;
    }
    for unknown in ["https", "8080", "9991"] {
        let mut stream = replicas(&namer, &format!("/#/io.l5d.k8s/{ns}/{unknown}/web")).await;
        until(&mut stream, "a negative answer", |a| *a == Addr::Neg).await;
    }
    namer.stop().await;
}

#[tokio::test]
async fn a_service_that_appears_late_binds_as_soon_as_it_does_and_labels_select() {
    let fake = FakeApiServer::shared();
    let ns = "slices-late";
    create_namespace(fake, ns);
    let namer = namer_on(
        fake,
        &format!(
            "  - kind: io.l5d.k8s\n    prefix: /by-version\n    label_selector: version\n    kubeconfig: {}\n",
            fake.kubeconfig_path().display()
        ),
    )
    .await;
    let mut client = InterpreterClient::new(channel(&namer).await);
    let bind = |name: &str, dtab: &str| {
        mesh::BindReq::from(&BindRequest { namespace: "default".into(), name: p(name), dtab: dtab.parse().unwrap() })
    };
    let dtab = format!(
        "/svc=>/#/io.l5d.k8s/{ns}/http;/v1=>/#/by-version/{ns}/http/web/v1;/v2=>/#/by-version/{ns}/http/web/v2"
    );
    let mut stream = client.stream_bound_tree(bind("/svc/web/users", &dtab)).await.unwrap().into_inner();
    let tree = |rsp: &mesh::BoundTreeRsp| NameTree::<BoundLeaf>::try_from(rsp).unwrap().to_string();
    let residual = |rsp: &mesh::BoundTreeRsp| {
        NameTree::<BoundLeaf>::try_from(rsp).unwrap().leaves().first().map(|l| l.name.residual().to_string())
    };
    let first = tokio::time::timeout(DEADLINE, stream.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(tree(&first), "~", "a missing service is negative");

    put_service(fake, ns, "web", http_port());
    let bound = tokio::time::timeout(DEADLINE, stream.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(tree(&bound), format!("/#/io.l5d.k8s/{ns}/http/web"));
    assert_eq!(residual(&bound).as_deref(), Some("/users"));

    // With a label selector, only the Service's own label value binds.
    let mut v1 = client.stream_bound_tree(bind("/v1", &dtab)).await.unwrap().into_inner();
    let v1_tree = tokio::time::timeout(DEADLINE, v1.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(tree(&v1_tree), format!("/#/by-version/{ns}/http/web/v1"));
    let mut v2 = client.stream_bound_tree(bind("/v2", &dtab)).await.unwrap().into_inner();
    let v2_tree = tokio::time::timeout(DEADLINE, v2.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(tree(&v2_tree), "~");
    namer.stop().await;
}

#[tokio::test]
async fn pods_give_endpoints_their_service_account_and_meshed_pods_their_identity() {
    let fake = FakeApiServer::shared();
    let ns = "slices-pods";
    create_namespace(fake, ns);
    put_service(fake, ns, "web", http_port());
    for (name, sa, meshed) in [("web-1", "web", true), ("web-2", "default", false)] {
        let mut labels = json!({"app": "web"});
        if meshed {
            labels["waymark.io/control-plane-ns"] = json!("waymark");
        }
        fake.create(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"serviceAccountName": sa, "containers": [{"name": "app", "image": "web"}]}}))
            .unwrap();
    }
    let uid = |name: &str| fake.get("v1", "Pod", Some(ns), name).unwrap()["metadata"]["uid"].clone();
    let endpoint = |ip: &str, pod: &str| {
        json!({"addresses": [ip], "conditions": {"ready": true},
               "targetRef": {"kind": "Pod", "namespace": ns, "name": pod, "uid": uid(pod)}})
    };
    put_slice(
        fake,
        ns,
        "web",
        "web-a",
        "IPv4",
        slice_http_port(8080),
        json!([endpoint("10.2.0.1", "web-1"), endpoint("10.2.0.2", "web-2")]),
    );
    let namer = namer_on(fake, "").await;
    let mut stream = replicas(&namer, &format!("/#/io.l5d.k8s/{ns}/http/web")).await;
    let addr = until(&mut stream, "both endpoints", |a| endpoints(a).is_some_and(|e| e.len() == 2)).await;
    let Addr::Bound { addrs, .. } = addr else { unreachable!() };
    assert_eq!(addrs[0].meta["pod"], "web-1");
    assert_eq!(addrs[0].meta["serviceAccount"], "web");
    assert_eq!(addrs[0].meta["identity"], format!("web.{ns}.serviceaccount.identity.waymark.example.org"));
    assert_eq!(addrs[1].meta["serviceAccount"], "default");
    assert!(!addrs[1].meta.contains_key("identity"), "not meshed");
    namer.stop().await;
}

#[tokio::test]
async fn watches_are_shared_shown_on_the_admin_port_and_dropped_when_idle() {
    let fake = FakeApiServer::shared();
    let ns = "slices-shared";
    create_namespace(fake, ns);
    put_service(fake, ns, "web", http_port());
    put_slice(fake, ns, "web", "web-a", "IPv4", slice_http_port(8080), json!([ready("10.3.0.1", true)]));
    let namer = namer_on(fake, "").await;
    let slices = RequestFilter::watches().in_namespace(ns).path_contains("endpointslices");
    let services = RequestFilter::watches().in_namespace(ns).path_contains("services");
    let mut streams = Vec::new();
    for id in ["http/web", "80/web", "http/web", "http/web/extra"] {
        let mut stream = replicas(&namer, &format!("/#/io.l5d.k8s/{ns}/{id}")).await;
        until(&mut stream, "the endpoint", |a| endpoints(a).is_some_and(|e| !e.is_empty())).await;
        streams.push(stream);
    }
    assert_eq!(fake.open_watches(&slices), 1, "one EndpointSlice watch for the service");
    assert_eq!(fake.open_watches(&services), 1, "one Service watch for the namespace");

    let response = reqwest::get(format!("http://{}/namer_state/io.l5d.k8s.json", namer.admin)).await.unwrap();
    assert_eq!(response.headers()["content-type"], "application/json");
    let state: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    let web = &state["services"][format!("{ns}/web")];
    assert_eq!(web["service"]["ports"][0]["name"], "http", "{state}");
    assert_eq!(web["endpointSlices"]["endpoints"], 1, "{state}");
    assert_eq!(web["addresses"]["http"]["addrs"][0]["ip"], "10.3.0.1", "{state}");
    assert_eq!(state["namespaces"][ns]["listed"], true, "{state}");

    drop(streams);
    wait_for("the watches to close once idle", async || {
        fake.open_watches(&slices) == 0 && fake.open_watches(&services) == 0
    })
    .await;
    namer.stop().await;
}

#[tokio::test]
async fn closed_watches_a_compacted_history_and_a_restart_miss_no_update() {
    let fake = FakeApiServer::start().unwrap();
    let ns = "default";
    put_service(&fake, ns, "web", http_port());
    put_slice(&fake, ns, "web", "web-a", "IPv4", slice_http_port(8080), json!([ready("10.4.0.1", true)]));
    let namer = namer_on(&fake, "").await;
    let mut stream = replicas(&namer, &format!("/#/io.l5d.k8s/{ns}/http/web")).await;
    until(&mut stream, "the first endpoint", |a| endpoints(a) == set(&["10.4.0.1:8080"])).await;

    // Closed watches resume where they were.
    fake.close_watches();
    put_slice(&fake, ns, "web", "web-a", "IPv4", slice_http_port(8080), json!([ready("10.4.0.2", true)]));
    until(&mut stream, "the change after closed watches", |a| endpoints(a) == set(&["10.4.0.2:8080"])).await;

    // Compacted history: the watches fall behind (they cannot open again), history moves
    // on and is compacted, so resuming gets 410 and only a new list can catch up.
    fake.fail_next_matching(usize::MAX, 500, RequestFilter::watches());
    fake.close_watches();
    put_slice(&fake, ns, "web", "web-a", "IPv4", slice_http_port(8080), json!([ready("10.4.0.3", true)]));
    put_slice(&fake, ns, "web", "web-b", "IPv4", slice_http_port(8080), json!([ready("10.4.0.4", true)]));
    fake.compact();
    fake.clear_faults();
    until(&mut stream, "the changes after a 410", |a| endpoints(a) == set(&["10.4.0.3:8080", "10.4.0.4:8080"])).await;

    // Restarted: changes made while it was down arrive after.
    fake.stop();
    put_slice(&fake, ns, "web", "web-b", "IPv4", slice_http_port(8080), json!([ready("10.4.0.5", true)]));
    fake.restart().unwrap();
    until(&mut stream, "the change made while the fake was down", |a| {
        endpoints(a) == set(&["10.4.0.3:8080", "10.4.0.5:8080"])
    })
    .await;
    namer.stop().await;
}

#[tokio::test]
async fn an_unreachable_api_server_keeps_the_last_addresses_and_shows_in_readiness() {
    let fake = FakeApiServer::start().unwrap();
    put_service(&fake, "default", "web", http_port());
    put_slice(&fake, "default", "web", "web-a", "IPv4", slice_http_port(8080), json!([ready("10.5.0.1", true)]));
    let namer = namer_on(&fake, "").await;
    let id = "/#/io.l5d.k8s/default/http/web";
    let mut stream = replicas(&namer, id).await;
    until(&mut stream, "the endpoint", |a| endpoints(a) == set(&["10.5.0.1:8080"])).await;
    let ready_url = format!("http://{}/ready", namer.admin);
    assert_eq!(reqwest::get(&ready_url).await.unwrap().status(), 200);

    fake.stop();
    wait_for("readiness to report the API server", async || {
        let response = reqwest::get(&ready_url).await.unwrap();
        response.status() == 503 && response.text().await.unwrap().contains("io.l5d.k8s")
    })
    .await;
    // Nothing negative or empty went out, and a new question gets the last addresses.
    let delivered = delivered_within(&mut stream, Duration::from_secs(2)).await;
    assert!(delivered.iter().all(|a| endpoints(a) == set(&["10.5.0.1:8080"])), "{delivered:?}");
    let mut client = ResolverClient::new(channel(&namer).await);
    let answer = client.get_replicas(replicas_req(&p(id))).await.unwrap().into_inner();
    assert_eq!(endpoints(&Addr::try_from(&answer).unwrap()), set(&["10.5.0.1:8080"]));
    let metrics = reqwest::get(format!("http://{}/metrics", namer.admin)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("namer_available{namer=\"/#/io.l5d.k8s\"} 0"), "{metrics}");

    fake.restart().unwrap();
    wait_for("readiness again", async || reqwest::get(&ready_url).await.unwrap().status() == 200).await;
    namer.stop().await;
}

#[tokio::test]
async fn load_balancer_addresses_bind_through_io_l5d_k8s_external() {
    let fake = FakeApiServer::shared();
    let ns = "external";
    create_namespace(fake, ns);
    fake.put(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "edge", "namespace": ns},
        "spec": {"type": "LoadBalancer", "ports": [{"name": "https", "port": 443, "targetPort": 8443}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}, {"ip": "203.0.113.8"}]}}}))
        .unwrap();
    let namer = namer_on(
        fake,
        &format!("  - kind: io.l5d.k8s.external\n    kubeconfig: {}\n", fake.kubeconfig_path().display()),
    )
    .await;
    let mut stream = replicas(&namer, &format!("/#/io.l5d.k8s.external/{ns}/https/edge")).await;
    until(&mut stream, "the load balancer", |a| endpoints(a) == set(&["203.0.113.7:443", "203.0.113.8:443"])).await;
    let mut by_number = replicas(&namer, &format!("/#/io.l5d.k8s.external/{ns}/443/edge")).await;
    until(&mut by_number, "the load balancer", |a| endpoints(a).is_some_and(|e| e.len() == 2)).await;
    namer.stop().await;
}

#[tokio::test]
async fn an_endpoint_whose_pod_cannot_be_read_waits_and_readiness_says_why() {
    let fake = FakeApiServer::start().unwrap();
    let ns = "default";
    put_service(&fake, ns, "web", http_port());
    for pod in ["web-1", "web-2"] {
        fake.create(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod, "namespace": ns, "labels": {"app": "web", "waymark.io/control-plane-ns": "waymark"}},
            "spec": {"serviceAccountName": "web", "containers": [{"name": "app", "image": "web"}]}}))
        .unwrap();
    }
    let endpoint = |ip: &str, pod: &str| json!({"addresses": [ip], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "namespace": ns, "name": pod}});
    put_slice(&fake, ns, "web", "web-a", "IPv4", slice_http_port(8080), json!([endpoint("10.6.0.1", "web-1")]));
    let namer = namer_on(&fake, "").await;
    let mut stream = replicas(&namer, "/#/io.l5d.k8s/default/http/web").await;
    until(&mut stream, "the first endpoint", |a| endpoints(a) == set(&["10.6.0.1:8080"])).await;

    // The namer may no longer read pods: a new endpoint waits rather than go out without
    // its identity, and the known one stays.
    for verb in ["get", "list"] {
        fake.deny(waymark_test_support::kube::AccessRule::deny(verb, "", "pods"));
    }
    put_slice(
        &fake,
        ns,
        "web",
        "web-a",
        "IPv4",
        slice_http_port(8080),
        json!([endpoint("10.6.0.1", "web-1"), endpoint("10.6.0.2", "web-2")]),
    );
    let ready_url = format!("http://{}/ready", namer.admin);
    wait_for("readiness to name the pod", async || {
        let response = reqwest::get(&ready_url).await.unwrap();
        response.status() == 503 && response.text().await.unwrap().contains("cannot read pod default/web-2")
    })
    .await;
    let delivered = delivered_within(&mut stream, Duration::from_millis(500)).await;
    assert!(delivered.iter().all(|a| endpoints(a) == set(&["10.6.0.1:8080"])), "{delivered:?}");

    fake.allow_all();
    let both = until(&mut stream, "the second endpoint", |a| endpoints(a).is_some_and(|e| e.len() == 2)).await;
    let Addr::Bound { addrs, .. } = both else { unreachable!() };
    assert!(addrs.iter().all(|a| a.meta["identity"] == "web.default.serviceaccount.identity.waymark.example.org"));
    wait_for("readiness again", async || reqwest::get(&ready_url).await.unwrap().status() == 200).await;
    namer.stop().await;
}
