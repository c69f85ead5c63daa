//! The whole story, on real processes talking over real sockets: header canaries, weighted
//! shifts made with `waymark dtab update`, dtab updates under load, the namer's loss and
//! return, etcd with two namer replicas, and bad input.
//!
//! Every test drives the built `waymark` binary: `waymark namer`, `waymark router`, and the
//! demo's sample services (`web` v1/v2 calling `greeter` v1/v2 through the router).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::mesh::{BASE_DTAB, Namer, Router, Services, Storage, free_port};
use tokio::sync::Mutex;
use waymark_test_support::EtcdServer;

/// A running mesh: services, a namer, a router, and where their files are.
struct Mesh {
    router: Router,
    namer: Namer,
    services: Services,
    dir: tempfile::TempDir,
    client: reqwest::Client,
}

/// What one request through the router came back with.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    body: String,
    l5d_err: Option<String>,
}

impl Mesh {
    /// Services, a namer on `storage` with the base dtab, and a router; ready for traffic.
    async fn start(storage: impl FnOnce(&std::path::Path) -> Storage) -> Mesh {
        let dir = tempfile::tempdir().unwrap();
        let router_port = free_port();
        let services = Services::start(dir.path(), router_port);
        let storage = storage(dir.path());
        let namer = Namer::start(dir.path(), "namer", &storage, &services.disco);
        put_dtab(&namer, BASE_DTAB).await;
        let router = Router::start(dir.path(), router_port, namer.mesh);
        let mesh = Mesh { router, namer, services, dir, client: reqwest::Client::new() };
        mesh.wait_for(|a| a.body == "web v1 -> greeter v1", Duration::from_secs(30), &[]).await;
        mesh
    }

    async fn files() -> Mesh {
        Mesh::start(|dir| {
            let dtabs = dir.join("dtabs");
            std::fs::create_dir_all(&dtabs).unwrap();
            Storage::Files(dtabs)
        })
        .await
    }

    /// One request for `web` (or the `Host` in `headers`) through the router.
    async fn ask(&self, headers: &[(&str, &str)]) -> Result<Answer, String> {
        ask(&self.client, &self.router.url(), headers).await
    }

    /// Asks until an answer satisfies `done`, for at most `within`.
    async fn wait_for(&self, done: impl Fn(&Answer) -> bool, within: Duration, headers: &[(&str, &str)]) -> Answer {
        let deadline = Instant::now() + within;
        let mut last = None;
        while Instant::now() < deadline {
            match self.ask(headers).await {
                Ok(answer) if done(&answer) => return answer,
                other => last = Some(other),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no matching answer within {within:?}; the last was {last:?}");
    }
}

async fn ask(client: &reqwest::Client, router: &str, headers: &[(&str, &str)]) -> Result<Answer, String> {
    let mut request = client.get(format!("{router}/")).timeout(Duration::from_secs(10));
    if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("host")) {
        request = request.header("host", "web");
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let l5d_err = response.headers().get("l5d-err").map(|v| v.to_str().unwrap_or_default().to_string());
    let body = response.text().await.map_err(|e| e.to_string())?.trim_end().to_string();
    Ok(Answer { status, body, l5d_err })
}

async fn put_dtab(namer: &Namer, dtab: &str) {
    let response = reqwest::Client::new()
        .put(format!("{}/api/1/dtabs/default", namer.url()))
        .header("content-type", "application/dtab")
        .body(dtab.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204, "{}", response.text().await.unwrap_or_default());
}

/// `waymark dtab update --base-url URL default -` with `dtab` on standard input.
fn cli_update(url: &str, dtab: &str) {
    support::Cli::new(&["dtab", "update", "--base-url", url, "default", "-"]).stdin(dtab).run().ok();
}

/// Which web version answered (`web v1 -> ...` is 1).
fn web_version(body: &str) -> Option<u8> {
    body.strip_prefix("web v").and_then(|rest| rest.chars().next()).and_then(|c| c.to_digit(10)).map(|d| d as u8)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_canary_reaches_v2_on_both_hops_and_nothing_else_moves() {
    let mesh = Mesh::files().await;
    let plain = mesh.ask(&[]).await.unwrap();
    assert_eq!((plain.status, plain.body.as_str()), (200, "web v1 -> greeter v1"));

    let both = "/svc/web => /svc/web-v2; /svc/greeter => /svc/greeter-v2";
    let canary = mesh.ask(&[("l5d-dtab", both)]).await.unwrap();
    assert_eq!(canary.status, 200);
    assert_eq!(canary.body, "web v2 -> greeter v2 [l5d-ctx-dtab: /svc/web=>/svc/web-v2;/svc/greeter=>/svc/greeter-v2]");

    // The demo's override names only web; it still travels to the second hop.
    let one = mesh.ask(&[("l5d-dtab", "/svc/web => /svc/web-v2")]).await.unwrap();
    assert_eq!(one.body, "web v2 -> greeter v1 [l5d-ctx-dtab: /svc/web=>/svc/web-v2]");

    // Interleaved, each request goes where its own headers say.
    for _ in 0..20 {
        assert_eq!(mesh.ask(&[]).await.unwrap().body, "web v1 -> greeter v1");
        assert!(mesh.ask(&[("l5d-dtab", both)]).await.unwrap().body.starts_with("web v2 -> greeter v2"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weighted_shift_made_with_the_cli_splits_traffic_by_its_weights() {
    let mesh = Mesh::files().await;
    cli_update(
        &mesh.namer.url(),
        "/svc => /#/io.l5d.fs;\n/svc/web => 0.8 * /svc/web-v1 & 0.2 * /svc/web-v2;\n/svc/greeter => /svc/greeter-v1\n",
    );
    // The shift must be in effect within one second of the update returning: every request
    // below starts after that second, so any that still used the old dtab would show.
    tokio::time::sleep(Duration::from_secs(1)).await;
    const REQUESTS: usize = 2_000;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (client, router) = (mesh.client.clone(), mesh.router.url());
        tasks.push(tokio::spawn(async move {
            let mut versions = Vec::new();
            for _ in 0..REQUESTS / 8 {
                let answer = ask(&client, &router, &[]).await.expect("answered");
                assert_eq!(answer.status, 200, "{answer:?}");
                versions.push(web_version(&answer.body).expect("a web version"));
            }
            versions
        }));
    }
    let mut v2 = 0;
    for task in tasks {
        v2 += task.await.unwrap().iter().filter(|v| **v == 2).count();
    }
    // 20% of 2,000 is 400 with a standard deviation of about 17.9; allow five of them.
    assert!((311..=489).contains(&v2), "web v2 answered {v2} of {REQUESTS}");
}

/// One dtab in the sequence below, and the web versions it allows.
struct Step {
    dtab: &'static str,
    allows: &'static [u8],
}

const STEPS: [Step; 3] = [
    Step { dtab: "/svc=>/#/io.l5d.fs;/svc/web=>/svc/web-v2;/svc/greeter=>/svc/greeter-v1", allows: &[2] },
    Step {
        dtab: "/svc=>/#/io.l5d.fs;/svc/web=>/svc/web-v1 & /svc/web-v2;/svc/greeter=>/svc/greeter-v1",
        allows: &[1, 2],
    },
    Step { dtab: BASE_DTAB, allows: &[1] },
];

type RequestLog = Arc<Mutex<Vec<(Duration, Duration, Result<u8, String>)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_dtab_updates_under_load_fail_no_request_and_each_goes_where_a_dtab_in_force_allowed() {
    let mesh = Mesh::files().await;
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    // (start, end, version or failure) of every request.
    let log: RequestLog = Arc::default();
    let mut load = Vec::new();
    for _ in 0..4 {
        let (client, router, stop, log) = (mesh.client.clone(), mesh.router.url(), stop.clone(), log.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let begun = started.elapsed();
                let outcome = match ask(&client, &router, &[]).await {
                    Ok(a) if a.status == 200 => web_version(&a.body).ok_or(a.body),
                    Ok(a) => Err(format!("{}: {}", a.status, a.body)),
                    Err(e) => Err(e),
                };
                log.lock().await.push((begun, started.elapsed(), outcome));
            }
        }));
    }
    // The base dtab (allowing v1) is in force from the start; then ten updates, a second apart.
    let mut updates: Vec<(Duration, Duration, &'static [u8])> = vec![(Duration::ZERO, Duration::ZERO, &[1])];
    for i in 0..10 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let step = &STEPS[i % STEPS.len()];
        let sent = started.elapsed();
        put_dtab(&mesh.namer, step.dtab).await;
        updates.push((sent, started.elapsed(), step.allows));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }

    // A request may use a dtab sent before it ended, unless a later one had been in force for
    // a while (half a second, far above propagation time) before it began.
    const PROPAGATION: Duration = Duration::from_millis(500);
    let log = log.lock().await;
    assert!(log.len() > 100, "the load ran ({} requests)", log.len());
    for (begun, ended, outcome) in log.iter() {
        let version = outcome.as_ref().unwrap_or_else(|e| panic!("a request failed at {begun:?}: {e}"));
        let allowed: Vec<u8> = updates
            .iter()
            .enumerate()
            .filter(|(i, (sent, _, _))| {
                let superseded = updates.get(i + 1).is_some_and(|(_, returned, _)| *returned + PROPAGATION < *begun);
                *sent <= *ended && !superseded
            })
            .flat_map(|(_, (_, _, allows))| allows.iter().copied())
            .collect();
        assert!(
            allowed.contains(version),
            "a request from {begun:?} to {ended:?} reached web v{version}; allowed {allowed:?}"
        );
    }
}

/// Steady load until finished; counts answers and keeps every failure.
struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(mesh: &Mesh) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let tasks = (0..2)
            .map(|_| {
                let (client, router, stop, answered) =
                    (mesh.client.clone(), mesh.router.url(), stop.clone(), answered.clone());
                tokio::spawn(async move {
                    let mut failures = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        match ask(&client, &router, &[]).await {
                            Ok(a) if a.status == 200 => {
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(a) => failures.push(format!("{}: {}", a.status, a.body)),
                            Err(e) => failures.push(e),
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    failures
                })
            })
            .collect();
        Load { stop, answered, tasks }
    }

    /// Waits until the load has had `more` answers since now: proof that it ran through
    /// whatever happens meanwhile, however fast this machine is.
    async fn answers_more(&self, more: usize) {
        let target = self.answered.load(Ordering::Relaxed) + more;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.answered.load(Ordering::Relaxed) < target {
            assert!(Instant::now() < deadline, "the load stalled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the load; not one request may have failed.
    async fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let failures = task.await.unwrap();
            assert!(failures.is_empty(), "{} requests failed, the first: {}", failures.len(), failures[0]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_namer_dies_the_router_keeps_routing_and_picks_up_changes_after_it_returns() {
    let mut mesh = Mesh::files().await;
    let load = Load::start(&mesh);
    load.answers_more(10).await;
    mesh.namer.process.kill();
    // With the namer gone, the last known routes serve every request, for as long as the
    // router notices the loss and keeps trying to reconnect.
    tokio::time::sleep(Duration::from_secs(3)).await;
    load.answers_more(50).await;
    for _ in 0..20 {
        assert_eq!(mesh.ask(&[]).await.unwrap().body, "web v1 -> greeter v1");
    }
    // The namer comes back (its file store kept the dtab), and a change made then reaches the
    // router, while the load never saw a failure.
    mesh.namer.restart();
    cli_update(&mesh.namer.url(), "/svc=>/#/io.l5d.fs;/svc/web=>/svc/web-v2;/svc/greeter=>/svc/greeter-v1");
    mesh.wait_for(|a| a.body == "web v2 -> greeter v1", Duration::from_secs(30), &[]).await;
    load.answers_more(10).await;
    load.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_etcd_a_change_through_one_replica_reaches_a_router_on_the_other() {
    let etcd = EtcdServer::start().expect("etcd starts (apt-get install etcd-server)");
    let endpoint = etcd.endpoint();
    let mut mesh = Mesh::start(|_| Storage::Etcd(endpoint.clone())).await;
    let other = Namer::start(mesh.dir.path(), "namer-b", &Storage::Etcd(etcd.endpoint()), &mesh.services.disco);
    let load = Load::start(&mesh);

    // A canary works as with files; a shift through the other replica reaches the router.
    let canary = mesh.ask(&[("l5d-dtab", "/svc/greeter => /svc/greeter-v2")]).await.unwrap();
    assert_eq!(canary.body, "web v1 -> greeter v2 [l5d-ctx-dtab: /svc/greeter=>/svc/greeter-v2]");
    cli_update(&other.url(), "/svc=>/#/io.l5d.fs;/svc/web=>/svc/web-v2;/svc/greeter=>/svc/greeter-v1");
    mesh.wait_for(|a| a.body == "web v2 -> greeter v1", Duration::from_secs(30), &[]).await;

    // The router's namer dies; a change made through the other replica meanwhile is picked up
    // once it returns.
    mesh.namer.process.kill();
    cli_update(&other.url(), "/svc=>/#/io.l5d.fs;/svc/web=>/svc/web-v2;/svc/greeter=>/svc/greeter-v2");
    load.answers_more(50).await;
    for _ in 0..10 {
        assert_eq!(mesh.ask(&[]).await.unwrap().body, "web v2 -> greeter v1", "the last known routes");
    }
    mesh.namer.restart();
    mesh.wait_for(|a| a.body == "web v2 -> greeter v2", Duration::from_secs(30), &[]).await;
    load.answers_more(10).await;
    load.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alternative_without_endpoints_falls_through_to_the_next_per_request() {
    let mesh = Mesh::files().await;
    // web-v3 exists (its file is there) but lists no endpoints yet.
    let v3 = mesh.services.disco.join("web-v3");
    std::fs::write(&v3, "# no endpoints yet\n").unwrap();
    put_dtab(&mesh.namer, "/svc=>/#/io.l5d.fs;/svc/web=>/svc/web-v3 | /svc/web-v2;/svc/greeter=>/svc/greeter-v1").await;
    mesh.wait_for(|a| a.body == "web v2 -> greeter v1", Duration::from_secs(30), &[]).await;
    for _ in 0..10 {
        assert_eq!(mesh.ask(&[]).await.unwrap().body, "web v2 -> greeter v1");
    }
    // Once web-v3 has an endpoint (web v1's, here), the first alternative takes the traffic.
    let v1 = std::fs::read_to_string(mesh.services.disco.join("web-v1")).unwrap();
    std::fs::write(&v3, v1).unwrap();
    mesh.wait_for(|a| a.body == "web v1 -> greeter v1", Duration::from_secs(30), &[]).await;
}

type BadInput<'a> = (&'a str, Vec<(&'a str, &'a str)>, u16, &'a str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_everything_else_keeps_working() {
    let mesh = Mesh::files().await;
    let closed = free_port();
    let refused = format!("/svc/web => /$/inet/127.0.0.1/{closed}");
    // (what, request headers, status, what the body says)
    let cases: [BadInput; 4] = [
        ("a malformed l5d-dtab", vec![("l5d-dtab", "/svc/web => ")], 400, "expected a name"),
        ("a dtab that loops", vec![("l5d-dtab", "/svc/web => /svc/web")], 502, "Max recursion level"),
        ("a name that resolves to nothing", vec![("host", "nowhere")], 502, "/svc/nowhere is not bound"),
        (
            "a destination that refuses connections",
            vec![("l5d-dtab", refused.as_str())],
            502,
            "connection to 127.0.0.1",
        ),
    ];
    for (what, headers, status, says) in cases {
        let answer = mesh.ask(&headers).await.unwrap();
        assert_eq!(answer.status, status, "{what}: {answer:?}");
        let l5d_err = answer.l5d_err.clone().unwrap_or_else(|| panic!("{what}: no l5d-err"));
        assert!(!l5d_err.is_empty(), "{what}");
        assert!(answer.body.contains(says), "{what}: the body says {:?}", answer.body);
        // Errors made after a name was read explain the routing: the logical name and dtabs.
        if status != 400 {
            assert!(answer.body.contains("logical name: /svc/"), "{what}: {:?}", answer.body);
        }
        // Everything else keeps working.
        assert_eq!(mesh.ask(&[]).await.unwrap().body, "web v1 -> greeter v1", "after {what}");
    }
}

/// A namer certificate (from one CA) and router certificates (from another, which the namer
/// requires its clients' certificates to come from), as `tls:` settings.
struct MeshPki {
    dir: tempfile::TempDir,
    namer_ca: waymark_test_support::TestCa,
    router_ca: waymark_test_support::TestCa,
}

impl MeshPki {
    fn new() -> MeshPki {
        MeshPki {
            dir: tempfile::tempdir().unwrap(),
            namer_ca: waymark_test_support::TestCa::new("namers").unwrap(),
            router_ca: waymark_test_support::TestCa::new("routers").unwrap(),
        }
    }

    /// The namer's `tls`: its certificate, and client certificates required.
    fn namer(&self) -> String {
        let (cert, key) = self.namer_ca.issue(&["namer.mesh.test"]).unwrap().write_pem(self.dir.path(), "namer");
        let client_ca = self.router_ca.write_pem(self.dir.path(), "router-ca");
        format!("{{cert_path: {cert}, key_path: {key}, client_ca_path: {client_ca}}}")
    }

    /// A router's `interpreter.tls`, with a certificate from the routers' CA when `member`.
    fn router(&self, name: &str, member: bool) -> String {
        let ca = self.namer_ca.write_pem(self.dir.path(), "namer-ca");
        let identity = if member {
            let (cert, key) = self.router_ca.issue(&[name]).unwrap().write_pem(self.dir.path(), name);
            format!(", cert_path: {cert}, key_path: {key}")
        } else {
            String::new()
        };
        format!("{{ca_path: {ca}, server_name: namer.mesh.test{identity}}}")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routers_bind_through_a_namer_over_mutual_tls_and_one_without_a_certificate_never_does() {
    let dir = tempfile::tempdir().unwrap();
    let pki = MeshPki::new();
    let router_port = free_port();
    let services = Services::start(dir.path(), router_port);
    let dtabs = dir.path().join("dtabs");
    std::fs::create_dir_all(&dtabs).unwrap();
    let namer = Namer::start_with(dir.path(), "namer", &Storage::Files(dtabs), &services.disco, Some(&pki.namer()));
    put_dtab(&namer, BASE_DTAB).await;
    let router = Router::start_with(dir.path(), "router", router_port, namer.mesh, Some(&pki.router("router", true)));
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match ask(&client, &router.url(), &[]).await {
            Ok(answer) if answer.body == "web v1 -> greeter v1" => break,
            other => assert!(Instant::now() < deadline, "no route through the TLS namer: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A change made after the router connected reaches it over the same TLS stream.
    put_dtab(&namer, &format!("{BASE_DTAB};/svc/web=>/svc/web-v2")).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while ask(&client, &router.url(), &[]).await.map(|a| a.body) != Ok("web v2 -> greeter v1".into()) {
        assert!(Instant::now() < deadline, "the change did not arrive");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A router without a certificate never binds, and its readiness shows the failure.
    let stranger =
        Router::start_with(dir.path(), "stranger", free_port(), namer.mesh, Some(&pki.router("stranger", false)));
    let ready = format!("http://127.0.0.1:{}/ready", stranger.admin);
    let deadline = Instant::now() + Duration::from_secs(30);
    let why = loop {
        let response = client.get(&ready).send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert_eq!(status, 503, "{text}");
        if text.contains("last error") {
            break text;
        }
        assert!(Instant::now() < deadline, "no error reported: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(why.starts_with("not ready: the namer has not answered yet"), "{why}");
    // Under TLS 1.3 the client learns of the refusal as a broken connection, not an alert.
    assert!(why.contains("transport error"), "{why}");
}
