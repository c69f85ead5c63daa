//! The interpreter keeps bindings and address sets current as dtabs and namers change.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use waymark_dtab::{Addr, Dtab, Path};
use waymark_interpreter::namers::{BuiltinNamer, FsConfig};
use waymark_interpreter::{BindState, Dns, FixedDtabs, Interpreter, InterpreterOptions, Resolver};

fn p(s: &str) -> Path {
    s.parse().unwrap()
}

fn d(s: &str) -> Dtab {
    s.parse().unwrap()
}

async fn next_matching<T: Clone>(rx: &mut watch::Receiver<T>, pred: impl Fn(&T) -> bool) -> T {
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|v| pred(v)))
        .await
        .expect("the watch reaches the expected state in time")
        .expect("the watch stays open")
        .clone()
}

fn shown(state: &BindState) -> String {
    match state {
        BindState::Bound(tree) => tree.to_string(),
        BindState::Pending => "pending".into(),
        BindState::Failed(e) => format!("failed: {e}"),
    }
}

#[tokio::test]
async fn bindings_follow_the_namespace_dtab_and_overrides() {
    let dtabs = Arc::new(FixedDtabs::with("default", d("/svc=>/$/inet/127.0.0.1/1")));
    let interpreter =
        Interpreter::new(dtabs.clone(), Vec::new(), Dns::from_system(), InterpreterOptions::default()).unwrap();
    let mut base = interpreter.bind("default", &p("/svc"), &Dtab::empty());
    assert_eq!(shown(&next_matching(&mut base, |s| *s != BindState::Pending).await), "/$/inet/127.0.0.1/1");

    let mut canary = interpreter.bind("default", &p("/svc"), &d("/svc=>/$/inet/127.0.0.1/2"));
    assert_eq!(shown(&next_matching(&mut canary, |s| *s != BindState::Pending).await), "/$/inet/127.0.0.1/2");

    dtabs.set("default", Some(d("/svc=>0.9*/$/inet/127.0.0.1/1 & 0.1*/$/inet/127.0.0.1/3")));
    let updated = next_matching(&mut base, |s| shown(s).contains("/3")).await;
    assert_eq!(shown(&updated), "0.90*/$/inet/127.0.0.1/1 & 0.10*/$/inet/127.0.0.1/3");
    // The override still wins over the new base dtab.
    assert_eq!(shown(&canary.borrow()), "/$/inet/127.0.0.1/2");

    dtabs.set("default", None);
    assert_eq!(shown(&next_matching(&mut base, |s| shown(s) == "~").await), "~");

    let mut looping = interpreter.bind("default", &p("/loop"), &d("/loop=>/loop"));
    let failed = next_matching(&mut looping, |s| matches!(s, BindState::Failed(_))).await;
    assert!(shown(&failed).contains("Max recursion level"), "{}", shown(&failed));
}

#[tokio::test]
async fn one_binding_is_shared_by_every_watcher() {
    let dtabs = Arc::new(FixedDtabs::with("default", d("/svc=>/$/inet/127.0.0.1/1")));
    let interpreter = Interpreter::new(dtabs, Vec::new(), Dns::from_system(), InterpreterOptions::default()).unwrap();
    let watchers: Vec<_> = (0..100).map(|_| interpreter.bind("default", &p("/svc/web"), &Dtab::empty())).collect();
    assert_eq!(interpreter.active_counts().0, 1);
    assert_eq!(interpreter.active_paths("default"), vec![p("/svc/web")]);
    drop(watchers);
}

#[tokio::test(start_paused = true)]
async fn idle_bindings_and_address_sets_are_dropped() {
    let dtabs = Arc::new(FixedDtabs::with("default", d("/svc=>/$/inet/127.0.0.1/1")));
    let options = InterpreterOptions { idle_ttl: Duration::from_secs(30), ..InterpreterOptions::default() };
    let interpreter = Interpreter::new(dtabs, Vec::new(), Dns::from_system(), options).unwrap();
    let mut rx = interpreter.bind("default", &p("/svc"), &Dtab::empty());
    next_matching(&mut rx, |s| *s != BindState::Pending).await;
    let mut addr = interpreter.resolve(&p("/$/inet/127.0.0.1/1"));
    next_matching(&mut addr, |a| *a != Addr::Pending).await;
    assert_eq!(interpreter.active_counts(), (1, 1));
    drop((rx, addr));
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(interpreter.active_counts(), (1, 1), "kept warm during the idle period");
    // A watcher that comes back within the idle period finds the same binding.
    let again = interpreter.bind("default", &p("/svc"), &Dtab::empty());
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(interpreter.active_counts(), (1, 0));
    drop(again);
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert_eq!(interpreter.active_counts(), (0, 0));
}

#[tokio::test]
async fn inet_ids_resolve_through_literals_and_dns() {
    let dtabs = Arc::new(FixedDtabs::new());
    let interpreter = Interpreter::new(dtabs, Vec::new(), Dns::from_system(), InterpreterOptions::default()).unwrap();
    let mut literal = interpreter.resolve(&p("/$/inet/127.1/8080"));
    assert_eq!(
        next_matching(&mut literal, |a| *a != Addr::Pending).await,
        Addr::bound(["127.0.0.1:8080".parse().unwrap()])
    );
    let mut transformed = interpreter.resolve(&p("/%/io.l5d.port/9/$/inet/127.0.0.1/8080"));
    assert_eq!(
        next_matching(&mut transformed, |a| *a != Addr::Pending).await,
        Addr::bound(["127.0.0.1:8080".parse().unwrap()])
    );
    let mut localhost = interpreter.resolve(&p("/$/inet/localhost/80"));
    let Addr::Bound { addrs, .. } = next_matching(&mut localhost, |a| *a != Addr::Pending).await else {
        panic!("localhost resolves")
    };
    assert!(addrs.iter().all(|a| a.ip.is_loopback() && a.port == 80));
    let mut failing = interpreter.resolve(&p("/$/fail"));
    assert!(matches!(next_matching(&mut failing, |a| *a != Addr::Pending).await, Addr::Failed { .. }));
    let mut nil = interpreter.resolve(&p("/$/nil"));
    assert_eq!(next_matching(&mut nil, |a| *a != Addr::Pending).await, Addr::bound([]));
}

#[tokio::test]
async fn bindings_and_addresses_follow_files_of_the_fs_namer() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("web-v1"), "127.0.0.1 8081\n").unwrap();
    let namers =
        [BuiltinNamer::Fs(FsConfig { prefix: "/io.l5d.fs".into(), root_dir: dir.path().into(), poll_interval_ms: 50 })];
    let dtabs = Arc::new(FixedDtabs::with("default", d("/svc=>/#/io.l5d.fs;/svc/web=>/svc/web-v2 | /svc/web-v1")));
    let interpreter = Interpreter::from_config(dtabs, &namers, InterpreterOptions::default()).await.unwrap();
    let resolver = interpreter.namespace("default");

    let mut web = resolver.bind(&p("/svc/web"), &Dtab::empty());
    assert_eq!(shown(&next_matching(&mut web, |s| *s != BindState::Pending).await), "/#/io.l5d.fs/web-v1");
    let mut v1 = resolver.resolve(&p("/#/io.l5d.fs/web-v1"));
    assert_eq!(next_matching(&mut v1, |a| *a != Addr::Pending).await, Addr::bound(["127.0.0.1:8081".parse().unwrap()]));

    // A new file makes the preferred alternative bind: the binding moves without any dtab change.
    // A router's resolver keeps both alternatives, so that it can fall through per request;
    // Finagle's rule (the interpreter's own `bind`) takes the first.
    std::fs::write(dir.path().join("web-v2"), "127.0.0.1 8082\n").unwrap();
    let both = "/#/io.l5d.fs/web-v2 | /#/io.l5d.fs/web-v1";
    assert_eq!(shown(&next_matching(&mut web, |s| shown(s) == both).await), both);
    let mut first = interpreter.bind("default", &p("/svc/web"), &Dtab::empty());
    assert_eq!(shown(&next_matching(&mut first, |s| *s != BindState::Pending).await), "/#/io.l5d.fs/web-v2");
    assert_eq!(interpreter.bound_names(), vec![p("/#/io.l5d.fs/web-v1"), p("/#/io.l5d.fs/web-v2")]);

    // Addresses follow file contents; an id with a residual resolves through its file.
    let mut v2 = resolver.resolve(&p("/#/io.l5d.fs/web-v2/extra"));
    assert_eq!(next_matching(&mut v2, |a| *a != Addr::Pending).await, Addr::bound(["127.0.0.1:8082".parse().unwrap()]));
    std::fs::write(dir.path().join("web-v2"), "127.0.0.1 9999\n").unwrap();
    assert_eq!(
        next_matching(&mut v2, |a| *a != Addr::bound(["127.0.0.1:8082".parse().unwrap()])).await,
        Addr::bound(["127.0.0.1:9999".parse().unwrap()])
    );
    std::fs::remove_file(dir.path().join("web-v2")).unwrap();
    assert_eq!(next_matching(&mut v2, |a| *a == Addr::Neg).await, Addr::Neg);
    assert_eq!(shown(&next_matching(&mut web, |s| shown(s) == "/#/io.l5d.fs/web-v1").await), "/#/io.l5d.fs/web-v1");
    assert_eq!(shown(&next_matching(&mut first, |s| shown(s) == "/#/io.l5d.fs/web-v1").await), "/#/io.l5d.fs/web-v1");

    let tree = interpreter.delegate("default", &p("/svc/web"), &Dtab::empty(), Duration::from_secs(60)).await.unwrap();
    assert_eq!(tree.bound_names().iter().map(|b| b.id().to_string()).collect::<Vec<_>>(), ["/#/io.l5d.fs/web-v1"]);
}

#[tokio::test(start_paused = true)]
async fn override_bindings_are_bounded_by_count_and_bytes_and_plain_bindings_never_are() {
    let dtabs = Arc::new(FixedDtabs::with("default", d("/svc=>/$/inet/127.0.0.1/1")));
    let options =
        InterpreterOptions { max_override_bindings: 3, max_override_bytes: 1_000, ..InterpreterOptions::default() };
    let interpreter = Interpreter::new(dtabs, Vec::new(), Dns::from_system(), options).unwrap();
    let overriding = |port: u32| d(&format!("/svc=>/$/inet/127.0.0.1/{port}"));
    let mut plain = interpreter.bind("default", &p("/svc"), &Dtab::empty());
    next_matching(&mut plain, |s| *s != BindState::Pending).await;

    let mut held: Vec<_> = (2..5).map(|port| interpreter.bind("default", &p("/svc"), &overriding(port))).collect();
    for rx in &mut held {
        assert!(matches!(next_matching(rx, |s| *s != BindState::Pending).await, BindState::Bound(_)));
    }
    // A fourth distinct override does not fit while the three are watched.
    let mut refused = interpreter.bind("default", &p("/svc"), &overriding(5));
    let state = next_matching(&mut refused, |s| *s != BindState::Pending).await;
    assert!(shown(&state).contains("too many distinct dtab overrides"), "{}", shown(&state));
    drop(refused);
    // Plain bindings are not overrides, and never refused.
    let mut other = interpreter.bind("default", &p("/svc/other"), &Dtab::empty());
    assert!(matches!(next_matching(&mut other, |s| *s != BindState::Pending).await, BindState::Bound(_)));

    // Once one is idle, it makes room at once, without waiting for the idle period.
    held.remove(0);
    let mut fits = interpreter.bind("default", &p("/svc"), &overriding(5));
    assert_eq!(shown(&next_matching(&mut fits, |s| *s != BindState::Pending).await), "/$/inet/127.0.0.1/5");
    assert_eq!(interpreter.active_counts().0, 5);

    // Bytes count too: one override larger than the byte limit never fits.
    let huge: Dtab = (0..100).map(|i| format!("/x{i}=>/y{i}")).collect::<Vec<_>>().join(";").parse().unwrap();
    let mut too_big = interpreter.bind("default", &p("/svc"), &huge);
    assert!(matches!(next_matching(&mut too_big, |s| *s != BindState::Pending).await, BindState::Failed(_)));
    assert!(matches!(*plain.borrow(), BindState::Bound(_)));
}

/// A namer whose source changes right after its first lookup answers, as a watch that
/// finishes listing just after a binding asked would: the first answer is pending, every
/// later one is bound. It counts per-path change subscriptions.
struct LateNamer {
    looked_up: std::sync::Mutex<bool>,
    changes: watch::Sender<u64>,
    per_path: watch::Sender<u64>,
}

impl waymark_dtab::Namer for LateNamer {
    fn lookup(&self, path: &Path) -> waymark_dtab::Lookup {
        let mut looked_up = self.looked_up.lock().unwrap();
        if !*looked_up {
            *looked_up = true;
            // The change lands before the binding can subscribe to anything after it.
            self.changes.send_modify(|n| *n += 1);
            self.per_path.send_modify(|n| *n += 1);
            return waymark_dtab::Lookup::Pending;
        }
        let bound = waymark_dtab::BoundName::new(path.clone(), Path::empty());
        waymark_dtab::Lookup::Found(waymark_dtab::NameTree::Leaf(waymark_dtab::Name::Bound(bound)))
    }
}

impl waymark_interpreter::ServiceNamer for LateNamer {
    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn lookup_changes(&self, _path: &Path) -> watch::Receiver<u64> {
        self.per_path.subscribe()
    }

    fn resolve(&self, _id: &Path) -> watch::Receiver<Addr> {
        watch::channel(Addr::bound(["127.0.0.1:1".parse().unwrap()])).1
    }
}

#[tokio::test]
async fn a_namer_change_between_a_lookup_and_the_binding_watching_it_is_not_missed() {
    let namer = Arc::new(LateNamer {
        looked_up: std::sync::Mutex::new(false),
        changes: watch::Sender::new(0),
        per_path: watch::Sender::new(0),
    });
    let dtabs = Arc::new(FixedDtabs::with("default", d("/svc=>/#/late")));
    let mounts: Vec<(Path, Arc<dyn waymark_interpreter::ServiceNamer>)> = vec![(p("/#/late"), namer.clone())];
    let interpreter = Interpreter::new(dtabs, mounts, Dns::from_system(), InterpreterOptions::default()).unwrap();
    let mut binding = interpreter.bind("default", &p("/svc/web"), &Dtab::empty());
    let bound = next_matching(&mut binding, |s| matches!(s, BindState::Bound(_))).await;
    assert_eq!(shown(&bound), "/#/late/web");
    // The binding follows the lookup it made, not only the namer as a whole.
    assert!(namer.per_path.receiver_count() >= 1);
}
