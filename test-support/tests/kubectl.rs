//! The fake API server against the real `kubectl`: what kubectl users do (create and apply
//! from YAML, get in its output forms, selectors, patch, delete, CRDs and their objects, watch,
//! server-side apply, dry runs, access checks) works as on a cluster.
//!
//! One fake serves the whole binary; each test works in a namespace of its own.

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use waymark_test_support::kube::{AccessRule, FakeApiServer};

/// How long a test waits for kubectl to show something (generous: the machine is shared).
const DEADLINE: Duration = Duration::from_secs(30);

fn fake() -> &'static FakeApiServer {
    FakeApiServer::shared()
}

fn run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut command = fake().kubectl();
    command.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().unwrap_or_else(|e| panic!("running kubectl (is it installed?): {e}"));
    if let Some(input) = stdin {
        child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write kubectl's input");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("kubectl finishes")
}

/// Runs kubectl, expects success, returns stdout.
fn ok(args: &[&str]) -> String {
    ok_with(args, None)
}

fn ok_with(args: &[&str], stdin: Option<&str>) -> String {
    let output = run(args, stdin);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "kubectl {} failed: {stderr}", args.join(" "));
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// Runs kubectl, expects failure, returns stderr.
fn fails(args: &[&str], stdin: Option<&str>) -> String {
    let output = run(args, stdin);
    assert!(
        !output.status.success(),
        "kubectl {} should have failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn apply(ns: &str, yaml: &str) -> String {
    ok_with(&["apply", "-n", ns, "-f", "-"], Some(yaml))
}

fn namespace(name: &str) -> String {
    ok_with(&["apply", "-f", "-"], Some(&format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n")));
    name.to_string()
}

fn json(args: &[&str]) -> Value {
    serde_json::from_str(&ok(args)).expect("kubectl printed JSON")
}

const DEPLOYMENT: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: nginx:1
        ports:
        - containerPort: 80
        env:
        - {name: A, value: '1'}
        - {name: B, value: '2'}
      - name: sidecar
        image: busybox
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
";

#[test]
fn apply_creates_then_updates_built_in_objects_with_a_strategic_merge() {
    let ns = namespace("kubectl-apply");
    let out = apply(&ns, DEPLOYMENT);
    assert!(out.contains("deployment.apps/web created") && out.contains("service/web created"), "{out}");
    let service = json(&["get", "-n", &ns, "service", "web", "-o", "json"]);
    assert!(service["spec"]["clusterIP"].as_str().is_some_and(|ip| !ip.is_empty()), "a cluster IP is allocated");
    assert_eq!(service["spec"]["ports"][0]["protocol"], "TCP");

    // The second apply drops a container and an env var, and changes an image: kubectl
    // sends a three-way strategic merge patch with deletion directives.
    let changed = DEPLOYMENT
        .replace("nginx:1", "nginx:2")
        .replace("        - {name: B, value: '2'}\n", "")
        .replace("      - name: sidecar\n        image: busybox\n", "");
    let out = apply(&ns, &changed);
    assert!(out.contains("deployment.apps/web configured") && out.contains("service/web unchanged"), "{out}");
    let deployment = json(&["get", "-n", &ns, "deployment", "web", "-o", "json"]);
    let containers = &deployment["spec"]["template"]["spec"]["containers"];
    assert_eq!(containers.as_array().unwrap().len(), 1);
    assert_eq!(containers[0]["image"], "nginx:2");
    assert_eq!(containers[0]["env"], serde_json::json!([{"name": "A", "value": "1"}]));
    assert_eq!(deployment["metadata"]["generation"], 2);
    assert!(deployment["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"].is_string());

    // Plain get lists it; a missing object is reported as the API server reports it.
    let table = ok(&["get", "-n", &ns, "deployments"]);
    assert!(table.lines().any(|l| l.starts_with("web ")), "{table}");
    let missing = fails(&["get", "-n", &ns, "deployment", "nope"], None);
    assert!(missing.contains("Error from server (NotFound): deployments.apps \"nope\" not found"), "{missing}");
}

#[test]
fn create_from_yaml_then_label_selectors_of_every_kind() {
    let ns = namespace("kubectl-selectors");
    let mut yaml = String::new();
    for (name, tier, rank) in [("one", "front", 1), ("two", "back", 2), ("three", "", 3)] {
        let tier = if tier.is_empty() { String::new() } else { format!(", tier: {tier}") };
        yaml.push_str(&format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  labels: {{rank: '{rank}'{tier}}}\n---\n"
        ));
    }
    let out = ok_with(&["create", "-n", &ns, "-f", "-"], Some(&yaml));
    assert_eq!(out.matches("created").count(), 3, "{out}");
    let select = |selector: &str| {
        let mut names: Vec<String> = ok(&["get", "-n", &ns, "configmaps", "-l", selector, "-o", "name"])
            .lines()
            .map(|l| l.trim_start_matches("configmap/").to_string())
            .collect();
        names.sort();
        names
    };
    assert_eq!(select("tier=front"), ["one"]);
    assert_eq!(select("tier!=front"), ["three", "two"]);
    assert_eq!(select("tier in (front,back)"), ["one", "two"]);
    assert_eq!(select("tier notin (front)"), ["three", "two"]);
    assert_eq!(select("tier"), ["one", "two"]);
    assert_eq!(select("!tier"), ["three"]);
    assert_eq!(select("rank>1,rank<3"), ["two"]);
    let by_field = ok(&["get", "-n", &ns, "configmaps", "--field-selector", "metadata.name=two", "-o", "name"]);
    assert_eq!(by_field.trim(), "configmap/two");
    // Pages of one item each, as `--chunk-size` asks, still list everything.
    let paged = ok(&["get", "-n", &ns, "configmaps", "--chunk-size=1", "-o", "name"]);
    assert_eq!(paged.lines().filter(|l| l.starts_with("configmap/")).count(), 3, "{paged}");
}

#[test]
fn patch_in_every_form_and_delete() {
    let ns = namespace("kubectl-patch");
    apply(&ns, "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: p\ndata:\n  a: '1'\n");
    ok(&["patch", "-n", &ns, "configmap", "p", "-p", r#"{"data":{"b":"2"}}"#]);
    ok(&["patch", "-n", &ns, "configmap", "p", "--type=merge", "-p", r#"{"data":{"a":null}}"#]);
    ok(&["patch", "-n", &ns, "configmap", "p", "--type=json", "-p", r#"[{"op":"add","path":"/data/c","value":"3"}]"#]);
    let data = json(&["get", "-n", &ns, "configmap", "p", "-o", "json"])["data"].clone();
    assert_eq!(data, serde_json::json!({"b": "2", "c": "3"}));
    let failed = fails(
        &["patch", "-n", &ns, "configmap", "p", "--type=json", "-p", r#"[{"op":"test","path":"/data/b","value":"9"}]"#],
        None,
    );
    assert!(failed.contains("The request is invalid") && failed.contains("/data/b"), "{failed}");
    ok(&["label", "-n", &ns, "configmap", "p", "stage=done"]);
    assert_eq!(ok(&["get", "-n", &ns, "configmap", "-l", "stage=done", "-o", "name"]).trim(), "configmap/p");

    let out = ok(&["delete", "-n", &ns, "configmap", "p"]);
    assert!(out.contains("configmap \"p\" deleted"), "{out}");
    let gone = fails(&["get", "-n", &ns, "configmap", "p"], None);
    assert!(gone.contains("configmaps \"p\" not found"), "{gone}");
}

const CRD: &str = "\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.kubectl.waymark.test
spec:
  group: kubectl.waymark.test
  scope: Namespaced
  names: {kind: Gadget, plural: gadgets, singular: gadget, shortNames: [gd]}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer}
              tags: {type: array, items: {type: string}}
";

#[test]
fn a_crd_then_its_custom_resources() {
    let ns = namespace("kubectl-crd");
    apply(&ns, CRD);
    ok(&["wait", "--for", "condition=established", "--timeout=30s", "crd/gadgets.kubectl.waymark.test"]);
    let gadget =
        "apiVersion: kubectl.waymark.test/v1\nkind: Gadget\nmetadata:\n  name: g\nspec:\n  size: 1\n  tags: [a, b]\n";
    assert!(apply(&ns, gadget).contains("gadget.kubectl.waymark.test/g created"));
    // Custom resources take merge patches from client-side apply: the list is replaced.
    assert!(apply(&ns, &gadget.replace("size: 1", "size: 2").replace("[a, b]", "[c]")).contains("configured"));
    let got = json(&["get", "-n", &ns, "gd", "g", "-o", "json"]);
    assert_eq!(got["spec"], serde_json::json!({"size": 2, "tags": ["c"]}));
    assert_eq!(got["metadata"]["generation"], 2);
    // The schema is enforced: a wrong type, and an unknown field under strict validation.
    let wrong = fails(&["apply", "-n", &ns, "-f", "-"], Some(&gadget.replace("size: 1", "size: big")));
    assert!(wrong.contains("Invalid value") && wrong.contains("spec.size"), "{wrong}");
    // kubectl from 1.25 asks for strict validation and is refused; older ones are warned, and
    // the field is pruned.
    let output = run(&["apply", "-n", &ns, "-f", "-"], Some(&gadget.replace("size: 1", "size: 1\n  colour: red")));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown field \"spec.colour\""), "{stderr}");
    assert!(json(&["get", "-n", &ns, "gadget", "g", "-o", "json"])["spec"].get("colour").is_none());

    ok(&["delete", "crd", "gadgets.kubectl.waymark.test"]);
    // Depending on its discovery cache, kubectl reports the type unknown or its list missing.
    let gone = fails(&["get", "-n", &ns, "gadgets"], None);
    assert!(
        gone.contains("the server doesn't have a resource type \"gadgets\"")
            || gone.contains("the server could not find the requested resource"),
        "{gone}"
    );
}

/// Collects kubectl's output lines as they come.
struct Lines {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Lines {
    fn spawn(args: &[&str]) -> Lines {
        let mut child =
            fake().kubectl().args(args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("running kubectl");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines { child, lines }
    }

    fn next(&self, what: &str) -> String {
        self.lines.recv_timeout(DEADLINE).unwrap_or_else(|_| panic!("kubectl never printed {what}"))
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn get_watch_sees_changes() {
    let ns = namespace("kubectl-watch");
    apply(&ns, "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: w\ndata:\n  v: one\n");
    let watch = Lines::spawn(&["get", "-n", &ns, "configmap", "w", "--watch", "-o", "jsonpath={.data.v}{\"\\n\"}"]);
    assert_eq!(watch.next("the current value"), "one");
    ok(&["patch", "-n", &ns, "configmap", "w", "--type=merge", "-p", r#"{"data":{"v":"two"}}"#]);
    assert_eq!(watch.next("the changed value"), "two");
    fake().close_watches_matching(waymark_test_support::kube::RequestFilter::watches().in_namespace(&ns));
    ok(&["patch", "-n", &ns, "configmap", "w", "--type=merge", "-p", r#"{"data":{"v":"three"}}"#]);
    // After the server closes the watch, kubectl either follows on and prints the new value,
    // or ends cleanly; it must not hang or fail.
    let mut watch = watch;
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        if let Ok(line) = watch.lines.recv_timeout(Duration::from_millis(100)) {
            assert_eq!(line, "three");
            break;
        }
        if let Some(status) = watch.child.try_wait().expect("kubectl's status") {
            assert!(status.success(), "kubectl failed when its watch was closed: {status}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "kubectl neither followed nor ended after the close");
    }
}

#[test]
fn server_side_apply_creates_updates_and_reports_conflicts() {
    let ns = namespace("kubectl-ssa");
    let map = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: s\ndata:\n  owned: mine\n  other: x\n";
    let created = ok_with(&["apply", "--server-side", "-n", &ns, "-f", "-"], Some(map));
    assert!(created.contains("configmap/s serverside-applied"), "{created}");
    let updated = ok_with(&["apply", "--server-side", "-n", &ns, "-f", "-"], Some(&map.replace("  other: x\n", "")));
    assert!(updated.contains("serverside-applied"), "{updated}");
    let data = json(&["get", "-n", &ns, "configmap", "s", "-o", "json"])["data"].clone();
    assert_eq!(data, serde_json::json!({"owned": "mine"}), "a field dropped from the applied configuration goes");

    let theirs = map.replace("owned: mine", "owned: theirs");
    let conflict =
        fails(&["apply", "--server-side", "--field-manager", "intruder", "-n", &ns, "-f", "-"], Some(&theirs));
    assert!(conflict.contains("conflict") && conflict.contains(".data.owned"), "{conflict}");
    ok_with(
        &["apply", "--server-side", "--force-conflicts", "--field-manager", "intruder", "-n", &ns, "-f", "-"],
        Some(&theirs),
    );
    let object = fake().get("v1", "ConfigMap", Some(&ns), "s").expect("the configmap");
    assert_eq!(object["data"]["owned"], "theirs");
    let managers: Vec<&str> =
        object["metadata"]["managedFields"].as_array().unwrap().iter().filter_map(|m| m["manager"].as_str()).collect();
    assert!(managers.contains(&"intruder"), "{managers:?}");
}

#[test]
fn imperative_creates_work() {
    // kubectl 1.33 sends these bodies as protobuf, older ones as JSON.
    let ns = namespace("kubectl-create");
    ok(&["create", "configmap", "literal", "-n", &ns, "--from-literal=a=b"]);
    ok(&["create", "secret", "generic", "secret", "-n", &ns, "--from-literal=x=y"]);
    ok(&["create", "serviceaccount", "robot", "-n", &ns]);
    ok(&["create", "service", "clusterip", "web", "-n", &ns, "--tcp=80:8080"]);
    assert_eq!(json(&["get", "-n", &ns, "configmap", "literal", "-o", "json"])["data"], serde_json::json!({"a": "b"}));
    let secret = json(&["get", "-n", &ns, "secret", "secret", "-o", "json"]);
    assert_eq!((secret["data"]["x"].as_str(), secret["type"].as_str()), (Some("eQ=="), Some("Opaque")));
    let service = json(&["get", "-n", &ns, "service", "web", "-o", "json"]);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], 8080);
    assert!(ok(&["get", "-n", &ns, "serviceaccount", "robot", "-o", "name"]).contains("serviceaccount/robot"));
}

#[test]
fn dry_runs_persist_nothing_and_can_i_follows_denials() {
    let ns = namespace("kubectl-dry");
    let out = ok_with(
        &["apply", "--dry-run=server", "-n", &ns, "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ghost\n"),
    );
    assert!(out.contains("(server dry run)"), "{out}");
    assert!(fails(&["get", "-n", &ns, "configmap", "ghost"], None).contains("not found"));

    assert_eq!(ok(&["auth", "can-i", "create", "secrets", "-n", &ns]).trim(), "yes");
    fake().deny(AccessRule::deny("create", "", "secrets").in_namespace(&ns));
    let output = run(&["auth", "can-i", "create", "secrets", "-n", &ns], None);
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "no");
    assert_eq!(ok(&["auth", "can-i", "get", "secrets", "-n", &ns]).trim(), "yes");
    let refused = fails(&["create", "secret", "generic", "s", "-n", &ns, "--from-literal=a=b"], None);
    assert!(refused.contains("Forbidden") || refused.contains("forbidden"), "{refused}");
}
