//! `waymark dtab` against namerd itself: a small HTTP server answers as namerd's
//! `io.l5d.httpController` does (status codes, unquoted base64 ETags of 8-byte in-memory
//! versions, no ETag on writes, empty 404/409/412 bodies, JSON shapes), and records what
//! the CLI sent, so that compatibility with namerd holds without a JVM.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use support::{Cli, file, script};
use waymark_dtab::Dtab;
use waymark_dtab::json::{DentryJson, dtab_from_json};

const NOT_FOUND: i32 = 3;
const EXISTS: i32 = 4;
const CONFLICT: i32 = 5;
const INVALID: i32 = 6;
const ERROR: i32 = 2;

/// namerd's answer to `/api/1/delegate/default?path=/svc/web`, from the reference exchange.
const DELEGATE_JSON: &str = r#"{"type":"delegate","path":"/svc/web","delegate":{"type":"leaf","path":"/#/io.l5d.k8s/prod/http/web","dentry":{"prefix":"/svc","dst":"/#/io.l5d.k8s/prod/http"},"bound":{"addr":{"type":"bound","addrs":[{"ip":"10.2.0.7","port":8080,"meta":{"nodeName":"node-a"}}],"meta":{}},"id":"/#/io.l5d.k8s/prod/http/web","path":"/"}}}"#;

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    uri: String,
    headers: HeaderMap,
    body: String,
}

/// namerd's `io.l5d.inMemory` store: a version counter per namespace, 1 on create.
#[derive(Default)]
struct Namerd {
    dtabs: BTreeMap<String, (u64, Dtab)>,
    seen: Vec<Seen>,
}

type Shared = Arc<Mutex<Namerd>>;

fn etag(version: u64) -> String {
    BASE64.encode(version.to_be_bytes())
}

fn status(code: StatusCode) -> Response {
    code.into_response()
}

/// The dtab codec namerd picks for a request body by `Content-Type`.
fn parse_body(headers: &HeaderMap, body: &str) -> Result<Dtab, Option<String>> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    match content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase().as_str() {
        "application/json" => {
            let dentries: Vec<DentryJson> = serde_json::from_str(body).map_err(|_| None)?;
            dtab_from_json(&dentries).map_err(|_| None)
        }
        // A dtab namerd's parser refuses though ours accepts it: namerd's PUT says why.
        "application/dtab" | "text/plain" if body.contains("/rejected-by-namerd") => {
            Err(Some("Invalid dtab: unknown label 'rejected-by-namerd'".to_string()))
        }
        "application/dtab" | "text/plain" => body.parse().map_err(|e: waymark_dtab::ParseError| Some(e.to_string())),
        _ => Err(Some(format!("Invalid Content-Type \"{content_type}\". "))),
    }
}

async fn list(State(namerd): State<Shared>) -> Response {
    let names: Vec<String> = namerd.lock().unwrap().dtabs.keys().cloned().collect();
    ([(header::CONTENT_TYPE, "application/json")], format!("{}\n", serde_json::to_string(&names).unwrap()))
        .into_response()
}

async fn dtab(
    State(namerd): State<Shared>,
    method: Method,
    uri: Uri,
    Path(ns): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = String::from_utf8(body.to_vec()).unwrap();
    let mut namerd = namerd.lock().unwrap();
    namerd.seen.push(Seen {
        method: method.clone(),
        uri: uri.to_string(),
        headers: headers.clone(),
        body: body.clone(),
    });
    match method {
        Method::GET => {
            let Some((version, dtab)) = namerd.dtabs.get(&ns) else { return status(StatusCode::NOT_FOUND) };
            let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
            let (content_type, text) = if accept.starts_with("application/dtab") {
                ("application/dtab", dtab.to_string())
            } else {
                ("application/json", serde_json::to_string(&Vec::<DentryJson>::from(dtab)).unwrap())
            };
            ([(header::CONTENT_TYPE, content_type), (header::ETAG, &etag(*version))], format!("{text}\n"))
                .into_response()
        }
        Method::POST => {
            // namerd's POST answers a bad body with an empty 400.
            let Ok(dtab) = parse_body(&headers, &body) else { return status(StatusCode::BAD_REQUEST) };
            if namerd.dtabs.contains_key(&ns) {
                return status(StatusCode::CONFLICT);
            }
            namerd.dtabs.insert(ns, (1, dtab));
            // No ETag on writes.
            status(StatusCode::NO_CONTENT)
        }
        Method::PUT => {
            let dtab = match parse_body(&headers, &body) {
                Ok(dtab) => dtab,
                Err(reason) => return (StatusCode::BAD_REQUEST, reason.unwrap_or_default()).into_response(),
            };
            let if_match = headers.get(header::IF_MATCH).map(|v| v.to_str().unwrap().trim_matches('"').to_string());
            let current = namerd.dtabs.get(&ns).map(|(v, _)| *v);
            match (if_match, current) {
                (Some(_), None) => status(StatusCode::NOT_FOUND),
                (Some(expected), Some(version)) if expected != etag(version) => status(StatusCode::PRECONDITION_FAILED),
                (_, current) => {
                    namerd.dtabs.insert(ns, (current.unwrap_or(0) + 1, dtab));
                    status(StatusCode::NO_CONTENT)
                }
            }
        }
        Method::DELETE => match namerd.dtabs.remove(&ns) {
            Some(_) => status(StatusCode::NO_CONTENT),
            None => status(StatusCode::NOT_FOUND),
        },
        _ => status(StatusCode::NOT_FOUND),
    }
}

async fn delegate(Path(ns): Path<String>, uri: Uri) -> Response {
    if ns == "default" && uri.query() == Some("path=/svc/web") {
        ([(header::CONTENT_TYPE, "application/json")], DELEGATE_JSON).into_response()
    } else {
        (StatusCode::BAD_REQUEST, format!("Invalid path: {uri}")).into_response()
    }
}

/// namerd's routes under `prefix`; everything else (history, per-namespace bound names,
/// binding without a namespace) is the empty 404 namerd gives an unknown path or namespace.
fn namerd_routes(router: Router<Shared>, prefix: &str) -> Router<Shared> {
    router
        .route(&format!("{prefix}/api/1/dtabs"), get(list))
        .route(&format!("{prefix}/api/1/dtabs/{{*ns}}"), any(dtab))
        .route(&format!("{prefix}/api/1/delegate/{{*ns}}"), get(delegate))
        .route(
            &format!("{prefix}/api/1/bound-names"),
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], "[\"\"]") }),
        )
}

/// Serves `router` on a free port from a thread of its own.
fn serve(router: Router) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, router).await.unwrap();
        });
    });
    addr
}

/// A namerd at the root of its address and under `/namerd`, as behind a path-routing proxy.
fn start_namerd() -> (Shared, String) {
    let namerd = Shared::default();
    let router = namerd_routes(namerd_routes(Router::new(), ""), "/namerd")
        .fallback(|| async { StatusCode::NOT_FOUND })
        .with_state(namerd.clone());
    (namerd, format!("http://{}", serve(router)))
}

fn cli(url: &str, args: &[&str]) -> Cli {
    let mut all = args.to_vec();
    all.extend(["--base-url", url]);
    Cli::new(&all)
}

fn last(namerd: &Shared) -> Seen {
    namerd.lock().unwrap().seen.last().cloned().unwrap()
}

fn header_of(seen: &Seen, name: &str) -> Option<String> {
    seen.headers.get(name).map(|v| v.to_str().unwrap().to_string())
}

#[test]
fn namerctl_commands_work_against_namerd() {
    let (namerd, url) = start_namerd();
    let dir = tempfile::tempdir().unwrap();
    let routes = file(
        dir.path(),
        "routes.dtab",
        "/svc => /#/io.l5d.k8s/prod/http ;\n/svc/web => 9 * /srv/web-v1 & /srv/web-v2\n",
    );

    assert_eq!(cli(&url, &["dtab", "list"]).run().ok().stdout, "");
    assert_eq!(
        cli(&url, &["dtab", "create", "default", &routes, "-m", "ignored by namerd"]).run().ok().stdout,
        "Created default\n"
    );
    let create = last(&namerd);
    assert_eq!(create.method, Method::POST);
    assert_eq!(header_of(&create, "content-type").as_deref(), Some("application/dtab"));
    assert_eq!(create.body, "/svc=>/#/io.l5d.k8s/prod/http;/svc/web=>9.00*/srv/web-v1 & /srv/web-v2");
    cli(&url, &["dtab", "create", "staging", "-"])
        .stdin(r#"{"version":"","dtab":[{"prefix":"/svc","dst":"/#/io.l5d.fs"}]}"#)
        .run()
        .ok();

    assert_eq!(cli(&url, &["dtab", "ls"]).run().ok().stdout, "default\nstaging\n");
    assert_eq!(cli(&url, &["dtab", "ls", "--json"]).run().ok().stdout, "[\"default\",\"staging\"]\n");
    let pretty = cli(&url, &["dtab", "get", "default"]).run().ok().stdout;
    assert_eq!(
        pretty,
        "# version AAAAAAAAAAE=\n/svc      => /#/io.l5d.k8s/prod/http ;\n/svc/web  => 9.00*/srv/web-v1 & /srv/web-v2 ;\n"
    );
    assert_eq!(header_of(&last(&namerd), "accept").as_deref(), Some("application/json"));
    assert_eq!(
        cli(&url, &["dtab", "get", "default", "--pretty=false"]).run().ok().stdout,
        "/svc=>/#/io.l5d.k8s/prod/http;/svc/web=>9.00*/srv/web-v1 & /srv/web-v2;\n"
    );
    let json: Value =
        serde_json::from_str(&cli(&url, &["dtab", "get", "staging", "--json"]).run().ok().stdout).unwrap();
    assert_eq!(json, json!({"version": "AAAAAAAAAAE=", "dtab": [{"prefix": "/svc", "dst": "/#/io.l5d.fs"}]}));

    // update: --version is sent as If-Match, unquoted, exactly as the ETag came.
    let next = file(dir.path(), "next.dtab", &pretty.replace("web-v2", "web-v3"));
    cli(&url, &["dtab", "update", "default", &next, "--version", "AAAAAAAAAAE="]).run().ok();
    assert_eq!(header_of(&last(&namerd), "if-match").as_deref(), Some("AAAAAAAAAAE="));
    let stale = cli(&url, &["dtab", "update", "default", &next, "--version", "AAAAAAAAAAE="]).run().code(CONFLICT);
    stale.one_line_error("412 Precondition Failed");
    // Without a version, no If-Match: namerd's unconditional upsert.
    cli(&url, &["dtab", "up", "new-ns", &next]).run().ok();
    assert_eq!(header_of(&last(&namerd), "if-match"), None);
    // The CI pattern: get --json, edit, update with the embedded version.
    let mut got: Value =
        serde_json::from_str(&cli(&url, &["dtab", "get", "default", "--json"]).run().ok().stdout).unwrap();
    assert_eq!(got["version"], "AAAAAAAAAAI=");
    got["dtab"][1]["dst"] = json!("/srv/web-v4");
    let json_file = file(dir.path(), "default.json", &got.to_string());
    cli(&url, &["dtab", "update", "default", &json_file]).run().ok();
    assert_eq!(header_of(&last(&namerd), "if-match").as_deref(), Some("AAAAAAAAAAI="));
    cli(&url, &["dtab", "update", "default", &json_file]).run().code(CONFLICT);

    // namerd's errors: empty 404, 409, 412 bodies; a 400 with namerd's reason is shown.
    cli(&url, &["dtab", "get", "missing"])
        .run()
        .code(NOT_FOUND)
        .one_line_error("namespace missing not found (404 Not Found)");
    cli(&url, &["dtab", "create", "default", &routes])
        .run()
        .code(EXISTS)
        .one_line_error("namespace default already exists (409 Conflict)");
    cli(&url, &["dtab", "update", "missing", &next, "--version", "AAAAAAAAAAE="]).run().code(NOT_FOUND);
    let refused = cli(&url, &["dtab", "update", "default", "-"]).stdin("/svc=>/rejected-by-namerd").run().code(INVALID);
    refused.one_line_error("the namer answered 400 Bad Request: Invalid dtab: unknown label 'rejected-by-namerd'");
    let refused = cli(&url, &["dtab", "create", "other", "-"]).stdin("/svc=>/rejected-by-namerd").run().code(INVALID);
    assert_eq!(refused.stderr, "error: the namer answered 400 Bad Request\n");

    assert_eq!(cli(&url, &["dtab", "delete", "staging"]).run().ok().stdout, "Deleted staging\n");
    cli(&url, &["dtab", "rm", "staging"]).run().code(NOT_FOUND).one_line_error("namespace staging not found");
    // The existence test of the linkerd examples.
    assert_eq!(cli(&url, &["dtab", "get", "staging"]).run().code(NOT_FOUND).stdout, "");
}

#[test]
fn a_base_url_with_a_path_prefix_is_kept() {
    let (namerd, url) = start_namerd();
    cli(&url, &["dtab", "create", "default", "-"]).stdin("/a=>/b").run().ok();
    let prefixed = format!("{url}/namerd/");
    assert_eq!(cli(&prefixed, &["dtab", "ls"]).run().ok().stdout, "default\n");
    assert_eq!(
        Cli::new(&["dtab", "get", "default"]).env("NAMERCTL_BASE_URL", &prefixed).run().ok().stdout,
        "# version AAAAAAAAAAE=\n/a  => /b ;\n"
    );
    assert_eq!(last(&namerd).uri, "/namerd/api/1/dtabs/default");
}

#[test]
fn diff_and_edit_work_against_namerd_and_its_extras_say_what_it_lacks() {
    let (namerd, url) = start_namerd();
    let dir = tempfile::tempdir().unwrap();
    cli(&url, &["dtab", "create", "default", "-"]).stdin("/svc=>/#/io.l5d.fs;/svc/web=>/svc/v1").run().ok();

    let diff = cli(&url, &["dtab", "diff", "default", "-"]).stdin("/svc=>/#/io.l5d.fs;/svc/web=>/svc/v2").run().code(1);
    assert!(diff.stdout.contains("- /svc/web=>/svc/v1;\n+ /svc/web=>/svc/v2;\n"), "{}", diff.stdout);

    // edit: a compare-and-swap on the version it read, which namerd honours.
    let editor = script(dir.path(), "editor", "sed -i 's|/svc/v1|/svc/v2|' \"$1\"\n");
    cli(&url, &["dtab", "edit", "default", "--yes"]).env("EDITOR", &editor).run().ok();
    let put = last(&namerd);
    assert_eq!((put.method.clone(), header_of(&put, "if-match").as_deref()), (Method::PUT, Some("AAAAAAAAAAE=")));
    assert_eq!(put.body, "/svc=>/#/io.l5d.fs;/svc/web=>/svc/v2");

    // namerd keeps no history, lists no bound names per namespace and cannot bind a dtab alone.
    cli(&url, &["dtab", "history", "default"])
        .run()
        .code(ERROR)
        .one_line_error("keeps no history of dtabs (namerd does not)");
    cli(&url, &["dtab", "history", "missing"]).run().code(NOT_FOUND).one_line_error("namespace missing");
    cli(&url, &["dtab", "rollback", "default"]).run().code(ERROR).one_line_error("keeps no history");
    let dry = cli(&url, &["dtab", "update", "--dry-run", "default", "-"]).stdin("/svc=>/#/io.l5d.fs").run().code(ERROR);
    dry.one_line_error("does not list the names bound in a namespace");
    assert!(
        cli(&url, &["dtab", "get", "default", "--json"]).run().ok().stdout.contains("\"version\":\"AAAAAAAAAAI=\"")
    );

    // delegate: namerd's JSON, as a tree or as sent.
    let tree = cli(&url, &["delegate", "default", "/svc/web"]).run().ok().stdout;
    assert_eq!(
        tree,
        "/svc/web\n└─ /#/io.l5d.k8s/prod/http/web  bound /#/io.l5d.k8s/prod/http/web  10.2.0.7:8080  [/svc => /#/io.l5d.k8s/prod/http]\n"
    );
    assert_eq!(
        cli(&url, &["delegate", "default", "/svc/web", "--json"]).run().ok().stdout,
        format!("{DELEGATE_JSON}\n")
    );
}

/// Our namer's history, with a write that always loses a race: rollback must send the
/// version it read as If-Match and report the conflict.
#[test]
fn rollback_is_a_compare_and_swap_on_the_version_it_read() {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let history = json!([
        {"version": "AAAAAAAAAAM=", "dtab": [{"prefix": "/a", "dst": "/v3"}], "at": "2030-01-01T00:00:03Z", "author": "bob", "message": null},
        {"version": "AAAAAAAAAAI=", "dtab": [{"prefix": "/a", "dst": "/v2"}], "at": "2030-01-01T00:00:02Z", "author": null, "message": null},
    ]);
    let recorder = seen.clone();
    let router = Router::new()
        .route(
            "/api/1/dtabs/racy",
            any(move |method: Method, uri: Uri, headers: HeaderMap, body: String| {
                let recorder = recorder.clone();
                async move {
                    recorder.lock().unwrap().push(Seen { method: method.clone(), uri: uri.to_string(), headers, body });
                    if method == Method::GET {
                        ([(header::ETAG, "AAAAAAAAAAM=")], "[{\"prefix\":\"/a\",\"dst\":\"/v3\"}]\n").into_response()
                    } else {
                        // Someone else wrote between our read and our write.
                        StatusCode::PRECONDITION_FAILED.into_response()
                    }
                }
            }),
        )
        .route("/api/1/dtabs/racy/history", get(move || async move { format!("{history}\n") }));
    let url = format!("http://{}", serve(router));

    let run = cli(&url, &["dtab", "rollback", "racy"]).run().code(CONFLICT);
    run.one_line_error("namespace racy is no longer at version AAAAAAAAAAM= (412 Precondition Failed)");
    let put = seen.lock().unwrap().iter().find(|s| s.method == Method::PUT).cloned().unwrap();
    assert_eq!(header_of(&put, "if-match").as_deref(), Some("AAAAAAAAAAM="));
    assert_eq!(put.body, "/a=>/v2");
    assert_eq!(header_of(&put, "waymark-message").as_deref(), Some("rollback to AAAAAAAAAAI="));
    assert_eq!(header_of(&put, "waymark-author").as_deref(), Some("tester"));
}

/// A namer that answers with more than ureq's default 10 MB is read (up to the tool's own
/// limit), and past that limit the answer is refused as too large, not as "cannot reach".
#[test]
fn a_large_answer_is_read_and_one_too_large_is_refused_as_such() {
    // 600,000 namespaces: a 13 MB list.
    let names: Vec<String> = (0..600_000).map(|i| format!("namespace-{i:010}")).collect();
    let list = serde_json::to_string(&names).unwrap();
    assert!(list.len() > 12 * 1024 * 1024);
    let router = Router::new().route(
        "/api/1/dtabs",
        get(move || {
            let list = list.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], list) }
        }),
    );
    let url = format!("http://{}", serve(router));
    let listed = cli(&url, &["dtab", "list"]).run().ok();
    assert_eq!(listed.stdout.lines().count(), 600_000);

    let huge_url = format!(
        "http://{}",
        serve(Router::new().route(
            "/api/1/dtabs",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], " ".repeat(65 * 1024 * 1024)) }),
        ))
    );
    let refused = cli(&huge_url, &["dtab", "list"]).run().code(ERROR);
    assert!(refused.stderr.contains("more than 64 MiB"), "{}", refused.stderr);
    assert!(!refused.stderr.contains("cannot reach"), "{}", refused.stderr);
}
