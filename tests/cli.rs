//! `waymark dtab` and `waymark delegate` end to end: the real binary against a real namer
//! process, for every command, output format, error path and exit status.

mod support;

use serde_json::{Value, json};
use support::{Cli, NamerProcess, file, script};

/// The exit statuses scripts rely on (see the `waymark-cli` crate documentation).
const DIFFERS: i32 = 1;
const ERROR: i32 = 2;
const NOT_FOUND: i32 = 3;
const EXISTS: i32 = 4;
const CONFLICT: i32 = 5;
const INVALID: i32 = 6;
const UNREACHABLE: i32 = 7;

const ROUTES: &str = "# routes\n/svc => /$/inet/127.1 ;\n/svc/web => /svc/8080 | /svc/8081\n";

fn version(namer: &NamerProcess, ns: &str) -> String {
    let json: Value = serde_json::from_str(&namer.cli(&["dtab", "get", ns, "--json"]).run().ok().stdout).unwrap();
    json["version"].as_str().unwrap().to_string()
}

fn stored(namer: &NamerProcess, ns: &str) -> String {
    namer.cli(&["dtab", "get", ns, "--pretty=false"]).run().ok().stdout
}

#[test]
fn namerctl_commands_print_what_namerctl_prints() {
    let namer = NamerProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let routes = file(dir.path(), "routes.dtab", ROUTES);

    assert_eq!(namer.cli(&["dtab", "list"]).run().ok().stdout, "");
    let created = namer.cli(&["dtab", "create", "default", &routes]).run().ok();
    assert_eq!((created.stdout.as_str(), created.stderr.as_str()), ("Created default\n", ""));
    // From standard input, with the alias.
    namer.cli(&["dtab", "new", "staging", "-"]).stdin("/svc=>/$/inet/127.1/9\n").run().ok();

    assert_eq!(namer.cli(&["dtab", "list"]).run().ok().stdout, "default\nstaging\n");
    assert_eq!(namer.cli(&["dtab", "ls", "--json"]).run().ok().stdout, "[\"default\",\"staging\"]\n");
    assert_eq!(namer.cli(&["dtab", "--json", "ls"]).run().ok().stdout, "[\"default\",\"staging\"]\n");

    let pretty = namer.cli(&["dtab", "get", "default"]).run().ok().stdout;
    assert_eq!(pretty, "# version AAAAAAAAAAE=\n/svc      => /$/inet/127.1 ;\n/svc/web  => /svc/8080 | /svc/8081 ;\n");
    assert_eq!(namer.cli(&["dtab", "cat", "default"]).run().ok().stdout, pretty);
    assert_eq!(stored(&namer, "default"), "/svc=>/$/inet/127.1;/svc/web=>/svc/8080 | /svc/8081;\n");
    let expected_json = json!({"version": "AAAAAAAAAAE=", "dtab": [
        {"prefix": "/svc", "dst": "/$/inet/127.1"},
        {"prefix": "/svc/web", "dst": "/svc/8080 | /svc/8081"},
    ]});
    for args in [["dtab", "get", "default", "--json"], ["dtab", "--json", "get", "default"]] {
        let out = namer.cli(&args).run().ok().stdout;
        assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), expected_json);
        assert!(out.ends_with("}\n") && !out.contains(": "), "compact JSON: {out}");
    }

    // What `get` prints is a dtab file: get, edit, update.
    let edited = file(dir.path(), "edited.dtab", &pretty.replace("/svc/8081", "/svc/9091"));
    let updated = namer.cli(&["dtab", "update", "default", &edited]).run().ok();
    assert_eq!(updated.stdout, "Updated default\n");
    assert_eq!(stored(&namer, "default"), "/svc=>/$/inet/127.1;/svc/web=>/svc/8080 | /svc/9091;\n");
    namer.cli(&["dtab", "up", "default", "-"]).stdin(&pretty).run().ok();
    // The memory store counts every write in the store: default 1, staging 2, then 3 and 4.
    assert_eq!(
        namer.cli(&["dtab", "get", "default"]).run().ok().stdout,
        pretty.replace("AAAAAAAAAAE=", "AAAAAAAAAAQ=")
    );

    // Deletion, with each alias; a missing namespace is status 3 and one line.
    assert_eq!(namer.cli(&["dtab", "delete", "staging"]).run().ok().stdout, "Deleted staging\n");
    namer.cli(&["dtab", "rm", "default"]).run().ok();
    let missing =
        namer.cli(&["dtab", "del", "default"]).run().code(NOT_FOUND).one_line_error("namespace default not found");
    assert_eq!(missing.stdout, "");
    assert_eq!(namer.cli(&["dtab", "list"]).run().ok().stdout, "");
}

#[test]
fn errors_have_their_own_status_and_one_line() {
    let namer = NamerProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let routes = file(dir.path(), "routes.dtab", ROUTES);
    namer.cli(&["dtab", "create", "default", &routes]).run().ok();

    // The existence test of the linkerd examples: `get` of a missing namespace fails quietly.
    let missing = namer.cli(&["dtab", "get", "nope"]).run().code(NOT_FOUND).one_line_error("namespace nope not found");
    assert_eq!(missing.stdout, "");
    namer.cli(&["dtab", "get", "default"]).run().ok();

    let exists = namer.cli(&["dtab", "create", "default", &routes]).run().code(EXISTS);
    exists.one_line_error("namespace default already exists (409 Conflict)");

    // A dtab that does not parse is refused before anything is sent, with a caret.
    let bad = file(dir.path(), "bad.dtab", "/svc => /a;\n/svc/web = /b\n");
    for args in [["dtab", "create", "other", bad.as_str()], ["dtab", "update", "default", bad.as_str()]] {
        let invalid = namer.cli(&args).run().code(INVALID);
        assert_eq!(
            invalid.stderr,
            format!("error: {bad}:2:10: expected '=>' but found '='\n  /svc/web = /b\n           ^\n")
        );
    }
    let invalid = namer.cli(&["dtab", "create", "other", "-"]).stdin("/a => /b &").run().code(INVALID);
    assert!(invalid.stderr.starts_with("error: <stdin>:1:11: "), "{}", invalid.stderr);
    let bad_json = file(dir.path(), "bad.json", "{\"dtab\": [{\"prefix\": \"/a\", \"dst\": \"/b |\"}]}");
    let invalid = namer.cli(&["dtab", "update", "default", &bad_json]).run().code(INVALID);
    assert!(
        invalid.stderr.starts_with(&format!("error: {bad_json}: dentry 0: invalid dst \"/b |\"")),
        "{}",
        invalid.stderr
    );
    assert_eq!(namer.cli(&["dtab", "list"]).run().ok().stdout, "default\n", "nothing was created");

    // What only the namer can refuse (here, a namespace name) comes back with its reason.
    let refused = namer.cli(&["dtab", "create", "bad name", &routes]).run().code(INVALID);
    assert!(refused.stderr.starts_with("error: the namer answered 400 Bad Request: "), "{}", refused.stderr);
    assert!(refused.stderr.contains("bad name"), "{}", refused.stderr);

    // A file that cannot be read.
    namer
        .cli(&["dtab", "create", "other", "/nonexistent/routes.dtab"])
        .run()
        .code(ERROR)
        .one_line_error("reading /nonexistent/routes.dtab");
    // Usage errors are clap's.
    Cli::new(&["dtab", "get"]).run().code(ERROR);
}

#[test]
fn an_unreachable_namer_is_status_7_naming_the_url() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    for args in [
        vec!["dtab", "list"],
        vec!["dtab", "get", "default"],
        vec!["dtab", "delete", "default"],
        vec!["dtab", "history", "default"],
        vec!["delegate", "default", "/svc/web"],
    ] {
        let mut args = args.clone();
        args.extend(["--base-url", &url]);
        Cli::new(&args)
            .run()
            .code(UNREACHABLE)
            .one_line_error(&format!("cannot reach the namer at {url}: connection refused"));
    }
    let create = Cli::new(&["dtab", "create", "default", "-", "--base-url", &url]).stdin("/a=>/b").run();
    create.code(UNREACHABLE).one_line_error(&url);

    // https is supported (rustls): the failure is the closed port, not the scheme.
    let https = format!("https://127.0.0.1:{port}");
    Cli::new(&["dtab", "list", "--base-url", &https])
        .run()
        .code(UNREACHABLE)
        .one_line_error(&format!("cannot reach the namer at {https}: connection refused"));
    // A name that cannot resolve (.invalid never does).
    Cli::new(&["dtab", "list", "--base-url", "http://namer.invalid:4180"])
        .run()
        .code(UNREACHABLE)
        .one_line_error("cannot reach the namer at http://namer.invalid:4180: ");

    // A namer that accepts but never answers is unreachable too, once the timeout passes.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    let run = Cli::new(&["dtab", "list", "--base-url", &silent_url, "--timeout", "1"]).run();
    run.code(UNREACHABLE).one_line_error(&format!("cannot reach the namer at {silent_url}: timed out"));
    drop(silent);

    Cli::new(&["dtab", "list", "--base-url", "namerd:4180"])
        .run()
        .code(ERROR)
        .one_line_error("invalid base URL: namerd:4180");
    Cli::new(&["dtab", "list", "--base-url", ""]).run().code(ERROR).one_line_error("empty base URL");
}

#[test]
fn the_base_url_comes_from_the_flag_the_environment_or_a_namerctl_file() {
    let namer = NamerProcess::start();
    namer.cli(&["dtab", "create", "default", "-"]).stdin("/a=>/b").run().ok();
    let elsewhere = "http://127.0.0.1:1";
    let dir = tempfile::tempdir().unwrap();

    Cli::new(&["dtab", "ls"]).env("WAYMARK_NAMER_URL", &namer.url).run().ok();
    Cli::new(&["dtab", "ls"]).env("NAMERCTL_BASE_URL", &namer.url).run().ok();
    // The flag wins over the environment, and WAYMARK_NAMER_URL over NAMERCTL_BASE_URL.
    Cli::new(&["dtab", "ls", "--base-url", &namer.url]).env("WAYMARK_NAMER_URL", elsewhere).run().ok();
    Cli::new(&["dtab", "ls"])
        .env("WAYMARK_NAMER_URL", elsewhere)
        .env("NAMERCTL_BASE_URL", &namer.url)
        .run()
        .code(UNREACHABLE);
    // namerctl's configuration file, in a parent directory.
    std::fs::write(dir.path().join(".namerctl.yaml"), format!("base-url: {}\n", namer.url)).unwrap();
    let nested = dir.path().join("deploy");
    std::fs::create_dir(&nested).unwrap();
    assert_eq!(Cli::new(&["dtab", "ls"]).dir(&nested).run().ok().stdout, "default\n");
}

#[test]
fn update_with_a_version_is_a_compare_and_swap() {
    let namer = NamerProcess::start();
    let dir = tempfile::tempdir().unwrap();
    namer.cli(&["dtab", "create", "default", "-"]).stdin("/svc=>/a").run().ok();
    let v1 = version(&namer, "default");
    let next = file(dir.path(), "next.dtab", "/svc=>/b");

    namer.cli(&["dtab", "update", "default", &next, "--version", &v1]).run().ok();
    let v2 = version(&namer, "default");
    assert_ne!(v1, v2);
    // The same version again is stale now: 412, status 5, nothing written.
    let third = file(dir.path(), "third.dtab", "/svc=>/c");
    let stale = namer.cli(&["dtab", "update", "default", &third, "--version", &v1]).run().code(CONFLICT);
    stale.one_line_error(&format!("namespace default is no longer at version {v1} (412 Precondition Failed)"));
    assert_eq!(stored(&namer, "default"), "/svc=>/b;\n");

    // The CI pattern: get --json, change the dtab in the JSON, update with the embedded version.
    let got: Value = serde_json::from_str(&namer.cli(&["dtab", "get", "default", "--json"]).run().ok().stdout).unwrap();
    let mut changed = got.clone();
    changed["dtab"][0]["dst"] = json!("/d");
    let json_file = file(dir.path(), "default.json", &changed.to_string());
    namer.cli(&["dtab", "update", "default", &json_file]).run().ok();
    assert_eq!(stored(&namer, "default"), "/svc=>/d;\n");
    // The same file again carries a stale version now.
    namer
        .cli(&["dtab", "update", "default", &json_file])
        .run()
        .code(CONFLICT)
        .one_line_error("412 Precondition Failed");
    // A bare array has no version: an unconditional update, as namerctl's text input.
    namer.cli(&["dtab", "update", "default", "-"]).stdin(r#"[{"prefix":"/svc","dst":"/e"}]"#).run().ok();
    assert_eq!(stored(&namer, "default"), "/svc=>/e;\n");
    // --version and a different version in the file: refuse to guess.
    let v = version(&namer, "default");
    let conflicting = namer.cli(&["dtab", "update", "default", &json_file, "--version", &v]).run().code(ERROR);
    conflicting.one_line_error("differ");

    // With a version, a missing namespace is 404; without one, update creates it (namerd's upsert).
    namer
        .cli(&["dtab", "update", "fresh", &next, "--version", &v1])
        .run()
        .code(NOT_FOUND)
        .one_line_error("namespace fresh not found");
    namer.cli(&["dtab", "update", "fresh", &next]).run().ok();
    assert_eq!(stored(&namer, "fresh"), "/svc=>/b;\n");
}

#[test]
fn diff_compares_dentry_by_dentry_like_diff() {
    let namer = NamerProcess::start();
    let dir = tempfile::tempdir().unwrap();
    namer.cli(&["dtab", "create", "default", "-"]).stdin(ROUTES).run().ok();

    // Same dtab, written differently: no difference, status 0, no output.
    let same = file(dir.path(), "same.dtab", "/svc=>/$/inet/127.1;/svc/web => /svc/8080|/svc/8081;");
    assert_eq!(namer.cli(&["dtab", "diff", "default", &same]).run().ok().stdout, "");

    let changed =
        file(dir.path(), "changed.dtab", "/svc => /$/inet/127.1;\n/svc/web => /svc/9090;\n/svc/api => /svc/7070;\n");
    let diff = namer.cli(&["dtab", "diff", "default", &changed]).run().code(DIFFERS);
    assert_eq!(
        diff.stdout,
        format!(
            "--- default (version AAAAAAAAAAE=)\n+++ {changed}\n  /svc=>/$/inet/127.1;\n- /svc/web=>/svc/8080 | /svc/8081;\n\
             + /svc/web=>/svc/9090;\n+ /svc/api=>/svc/7070;\n"
        )
    );
    assert_eq!(diff.stderr, "", "a difference is not an error");
    let from_stdin = namer.cli(&["dtab", "diff", "default", "-"]).stdin("/svc => /$/inet/127.1").run().code(DIFFERS);
    assert!(
        from_stdin.stdout.starts_with("--- default (version AAAAAAAAAAE=)\n+++ <stdin>\n"),
        "{}",
        from_stdin.stdout
    );

    let json: Value =
        serde_json::from_str(&namer.cli(&["dtab", "diff", "default", &changed, "--json"]).run().code(DIFFERS).stdout)
            .unwrap();
    assert_eq!(json["version"], "AAAAAAAAAAE=");
    let ops: Vec<(&str, &str)> = json["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["op"].as_str().unwrap(), c["dst"].as_str().unwrap()))
        .collect();
    assert_eq!(
        ops,
        vec![
            ("unchanged", "/$/inet/127.1"),
            ("removed", "/svc/8080 | /svc/8081"),
            ("added", "/svc/9090"),
            ("added", "/svc/7070")
        ]
    );

    namer.cli(&["dtab", "diff", "nope", &same]).run().code(NOT_FOUND).one_line_error("namespace nope not found");
    let bad = file(dir.path(), "bad.dtab", "/svc => ");
    namer.cli(&["dtab", "diff", "default", &bad]).run().code(INVALID);
    // Nothing was written by any of this.
    assert_eq!(version(&namer, "default"), "AAAAAAAAAAE=");
}

#[test]
fn history_records_who_and_why_and_rollback_restores_with_compare_and_swap() {
    let namer = NamerProcess::start();
    namer.cli(&["dtab", "create", "web", "-", "--author", "alice", "-m", "first routes"]).stdin("/svc=>/v1").run().ok();
    let v1 = version(&namer, "web");
    // The author defaults to the user name.
    namer.cli(&["dtab", "update", "web", "-", "--message", "try v2"]).stdin("/svc=>/v2").run().ok();
    let v2 = version(&namer, "web");
    namer
        .cli(&["dtab", "update", "web", "-", "--author", "zoë", "-m", "v3 & more"])
        .stdin("/svc=>/v3;/extra=>/x")
        .run()
        .ok();
    let v3 = version(&namer, "web");

    let table = namer.cli(&["dtab", "history", "web"]).run().ok().stdout;
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 4, "{table}");
    assert!(rows[0].starts_with("VERSION") && rows[0].contains("AUTHOR") && rows[0].ends_with("MESSAGE"), "{table}");
    let fields =
        |row: &str| row.split("  ").map(str::trim).filter(|f| !f.is_empty()).map(String::from).collect::<Vec<_>>();
    let newest = fields(rows[1]);
    assert_eq!(
        (newest[0].as_str(), newest[2].as_str(), newest[3].as_str(), newest[4].as_str()),
        (v3.as_str(), "zoë", "+2 -1", "v3 & more")
    );
    assert_eq!(fields(rows[2])[2..], ["tester", "+1 -1", "try v2"]);
    assert_eq!(fields(rows[3])[2..], ["alice", "1 dentries", "first routes"]);

    let json: Value =
        serde_json::from_str(&namer.cli(&["dtab", "history", "web", "--json"]).run().ok().stdout).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 3);
    assert_eq!(json[0]["version"], v3.as_str());
    assert_eq!(json[2]["dtab"], json!([{"prefix": "/svc", "dst": "/v1"}]));

    // One step back: v2's dtab, recorded as a rollback.
    let rolled = namer.cli(&["dtab", "rollback", "web"]).run().ok();
    assert_eq!(rolled.stdout, format!("Rolled back web to version {v2}\n"));
    assert_eq!(stored(&namer, "web"), "/svc=>/v2;\n");
    let json: Value =
        serde_json::from_str(&namer.cli(&["dtab", "history", "web", "--json"]).run().ok().stdout).unwrap();
    assert_eq!(
        (json[0]["message"].as_str(), json[0]["author"].as_str()),
        (Some(format!("rollback to {v2}").as_str()), Some("tester"))
    );
    // To a named version, with a message.
    namer.cli(&["dtab", "rollback", "web", "--to", &v1, "-m", "back to the start"]).run().ok();
    assert_eq!(stored(&namer, "web"), "/svc=>/v1;\n");
    // Already there: nothing to do, nothing written.
    let before = version(&namer, "web");
    let same = namer.cli(&["dtab", "rollback", "web", "--to", &v1]).run().ok();
    assert!(same.stdout.contains("already has the dtab of version"), "{}", same.stdout);
    assert_eq!(version(&namer, "web"), before);
    namer
        .cli(&["dtab", "rollback", "web", "--to", "bm90LWEtdmVyc2lvbg=="])
        .run()
        .code(ERROR)
        .one_line_error("is not in the history of web");

    // A deletion is no target, but a deleted namespace can be restored.
    namer.cli(&["dtab", "delete", "web", "-m", "retire"]).run().ok();
    let restored = namer.cli(&["dtab", "rollback", "web"]).run().ok();
    assert!(restored.stdout.starts_with("Rolled back web to version "), "{}", restored.stdout);
    assert_eq!(stored(&namer, "web"), "/svc=>/v1;\n");
    // Now one step back is the deletion.
    namer.cli(&["dtab", "rollback", "web"]).run().code(ERROR).one_line_error("cannot be rolled back to");
    let json: Value =
        serde_json::from_str(&namer.cli(&["dtab", "history", "web", "--json"]).run().ok().stdout).unwrap();
    let deletion =
        json.as_array().unwrap().iter().find(|e| e["dtab"].is_null()).unwrap()["version"].as_str().unwrap().to_string();
    assert_eq!(json[1]["message"], "retire");
    namer
        .cli(&["dtab", "rollback", "web", "--to", &deletion])
        .run()
        .code(ERROR)
        .one_line_error("a deletion cannot be rolled back to");

    namer.cli(&["dtab", "history", "never"]).run().code(NOT_FOUND).one_line_error("no history for namespace never");
    namer.cli(&["dtab", "rollback", "never"]).run().code(NOT_FOUND);
}

#[test]
fn edit_reviews_and_applies_against_the_version_it_started_from() {
    let namer = NamerProcess::start();
    let dir = tempfile::tempdir().unwrap();
    namer.cli(&["dtab", "create", "default", "-"]).stdin("/svc=>/$/inet/127.1;/svc/web=>/svc/8080").run().ok();
    let edit = |editor: &str| namer.cli(&["dtab", "edit", "default"]).env("EDITOR", editor);

    // Nothing changed: nothing written.
    let untouched = edit("true").run().ok();
    assert_eq!(untouched.stdout, "No changes to default\n");
    assert_eq!(version(&namer, "default"), "AAAAAAAAAAE=");

    // The editor sees the live dtab, one dentry per line, under a header.
    let seen = dir.path().join("seen.dtab");
    let to_9090 = script(
        dir.path(),
        "to-9090",
        &format!("cp \"$1\" {}\nsed -i 's|/svc/8080|/svc/9090|' \"$1\"\n", seen.display()),
    );
    // Declined: nothing written.
    let declined = edit(&to_9090).stdin("n\n").run().code(ERROR);
    assert!(declined.stdout.contains("- /svc/web=>/svc/8080;\n+ /svc/web=>/svc/9090;\n"), "{}", declined.stdout);
    assert!(declined.stderr.starts_with("Apply? [y/N] error: not applied"), "{}", declined.stderr);
    assert_eq!(version(&namer, "default"), "AAAAAAAAAAE=");
    let seen = std::fs::read_to_string(&seen).unwrap();
    assert!(seen.starts_with("# The dtab of namespace default at version AAAAAAAAAAE="), "{seen}");
    assert!(seen.ends_with("\n/svc=>/$/inet/127.1;\n/svc/web=>/svc/8080;\n"), "{seen}");
    // Confirmed on standard input.
    let applied = edit(&to_9090).stdin("y\n").run().ok();
    assert!(applied.stdout.starts_with("--- default (version AAAAAAAAAAE=)\n+++ edited\n"), "{}", applied.stdout);
    assert!(applied.stdout.ends_with("Updated default\n"), "{}", applied.stdout);
    assert_eq!(stored(&namer, "default"), "/svc=>/$/inet/127.1;/svc/web=>/svc/9090;\n");

    // A parse error reopens the editor with the error at the top; the fix is then applied.
    let second_open = dir.path().join("second-open.dtab");
    let break_then_fix = script(
        dir.path(),
        "break-then-fix",
        &format!(
            "if [ ! -e {state} ]; then touch {state}; sed -i 's|/svc/web=>|/svc/web = |' \"$1\"\n\
             else cp \"$1\" {second}; sed -i 's|/svc/web = |/svc/web => /svc/7070 \\| |' \"$1\"; fi\n",
            state = dir.path().join("state").display(),
            second = second_open.display()
        ),
    );
    let fixed =
        namer.cli(&["dtab", "edit", "default", "--yes", "-m", "fixed"]).env("EDITOR", &break_then_fix).run().ok();
    assert!(fixed.stderr.contains(":10:10: expected '=>' but found '='; reopening the editor"), "{}", fixed.stderr);
    let second_open = std::fs::read_to_string(&second_open).unwrap();
    assert!(second_open.starts_with("# error: line 10, column 10: expected '=>' but found '='\n"), "{second_open}");
    assert_eq!(
        second_open.lines().nth(9),
        Some("/svc/web = /svc/9090;"),
        "the error's line number is right:\n{second_open}"
    );
    assert_eq!(stored(&namer, "default"), "/svc=>/$/inet/127.1;/svc/web=>/svc/7070 | /svc/9090;\n");

    // Saved unchanged after the error: refused as invalid, nothing applied.
    let always_broken = script(dir.path(), "always-broken", "sed -i 's|/svc/web=>|/svc/web = |' \"$1\"\n");
    let before = version(&namer, "default");
    let refused = namer.cli(&["dtab", "edit", "default", "--yes"]).env("EDITOR", &always_broken).run().code(INVALID);
    assert!(refused.stderr.contains("expected '=>' but found '='; nothing applied\n"), "{}", refused.stderr);
    // Saved empty: cancelled.
    let emptied = script(dir.path(), "empty", ": > \"$1\"\n");
    namer
        .cli(&["dtab", "edit", "default", "--yes"])
        .env("EDITOR", &emptied)
        .run()
        .code(ERROR)
        .one_line_error("edit cancelled");
    // An editor that fails.
    namer
        .cli(&["dtab", "edit", "default", "--yes"])
        .env("EDITOR", "false")
        .run()
        .code(ERROR)
        .one_line_error("the editor false failed");
    assert_eq!(version(&namer, "default"), before);
    // $VISUAL comes before $EDITOR.
    let visual = namer.cli(&["dtab", "edit", "default", "--yes"]).env("VISUAL", &emptied).env("EDITOR", "true").run();
    visual.code(ERROR).one_line_error("edit cancelled");

    namer.cli(&["dtab", "edit", "nope"]).env("EDITOR", "true").run().code(NOT_FOUND);
}

#[test]
fn two_concurrent_editors_the_second_to_save_gets_a_conflict_and_applies_nothing() {
    let namer = NamerProcess::start();
    let dir = tempfile::tempdir().unwrap();
    namer.cli(&["dtab", "create", "default", "-"]).stdin("/svc=>/$/inet/127.1;/svc/web=>/svc/8080").run().ok();

    // Editor B changes web to 7070 and saves at once.
    let editor_b = script(dir.path(), "editor-b", "sed -i 's|/svc/8080|/svc/7070|' \"$1\"\n");
    // Editor A opens first, and while it is open, B edits and applies; then A saves 9090.
    let editor_a = script(
        dir.path(),
        "editor-a",
        &format!(
            "EDITOR={editor_b} {waymark} dtab edit default --yes -m 'editor b' --base-url {url} > {b_out} 2>&1\n\
             sed -i 's|/svc/8080|/svc/9090|' \"$1\"\n",
            waymark = support::WAYMARK,
            url = namer.url,
            b_out = dir.path().join("b.out").display()
        ),
    );
    let a = namer
        .cli(&["dtab", "edit", "default", "--yes", "-m", "editor a"])
        .env("EDITOR", &editor_a)
        .run()
        .code(CONFLICT);
    let b_out = std::fs::read_to_string(dir.path().join("b.out")).unwrap();
    assert!(b_out.ends_with("Updated default\n"), "{b_out}");

    assert!(
        a.stderr.contains(
            "default changed while you were editing (it is no longer at version AAAAAAAAAAE=); nothing applied"
        ),
        "{}",
        a.stderr
    );
    assert_eq!(a.stderr.lines().count(), 1, "{}", a.stderr);
    // B's change stands; A's edit is kept for the user to merge.
    assert_eq!(stored(&namer, "default"), "/svc=>/$/inet/127.1;/svc/web=>/svc/7070;\n");
    let kept = a.stderr.trim_end().rsplit("your edit is kept in ").next().unwrap();
    let kept_text = std::fs::read_to_string(kept).unwrap();
    assert!(kept_text.contains("/svc/web=>/svc/9090;"), "{kept_text}");
    std::fs::remove_file(kept).unwrap();
    let history: Value =
        serde_json::from_str(&namer.cli(&["dtab", "history", "default", "--json"]).run().ok().stdout).unwrap();
    let messages: Vec<&str> = history.as_array().unwrap().iter().filter_map(|e| e["message"].as_str()).collect();
    assert_eq!(messages, ["editor b"]);
}

#[test]
fn dry_run_shows_changed_resolutions_and_flags_names_that_would_break() {
    let namer = NamerProcess::start();
    let dir = tempfile::tempdir().unwrap();
    namer
        .cli(&["dtab", "create", "default", "-"])
        .stdin("/svc/web => /$/inet/127.1/8080;\n/svc/api => /$/inet/127.1/9000;\n/svc/db => /$/inet/127.1/5432;\n")
        .run()
        .ok();
    // Nothing bound yet.
    let unchanged = file(
        dir.path(),
        "unchanged.dtab",
        "/svc/web => /$/inet/127.1/8080;/svc/api => /$/inet/127.1/9000;/svc/db => /$/inet/127.1/5432",
    );
    let nothing = namer.cli(&["dtab", "update", "--dry-run", "default", &unchanged]).run().ok();
    assert_eq!(nothing.stdout, "No names are bound in default now; nothing to compare.\n");
    // Clients bind three names.
    for name in ["/svc/web", "/svc/api", "/svc/db"] {
        assert_eq!(namer.get(&format!("/api/1/bind/default?path={name}")).0, 200);
    }
    let (_, bound) = namer.get("/api/1/bound-names/default");
    assert_eq!(bound.trim(), r#"["/svc/api","/svc/db","/svc/web"]"#);

    let same = namer.cli(&["dtab", "update", "--dry-run", "default", &unchanged]).run().ok();
    assert_eq!(same.stdout, "No change: all 3 names bound in default would resolve as they do now.\n");

    // web disappears (negative), api moves, db loops (binding fails).
    let risky = file(dir.path(), "risky.dtab", "/svc/api => /$/inet/127.1/9001;\n/svc/db => /svc/db;\n");
    let report = namer.cli(&["dtab", "update", "--dry-run", "default", &risky]).run().code(DIFFERS);
    assert_eq!(report.stderr, "");
    let out = &report.stdout;
    assert!(out.starts_with("3 of 3 names bound in default would resolve differently:\n"), "{out}");
    assert!(out.contains("\n  /svc/api\n    before: /$/inet/127.1/9000\n    after:  /$/inet/127.1/9001\n\n"), "{out}");
    assert!(out.contains("\n! /svc/web\n    before: /$/inet/127.1/8080\n    after:  ~\n    ! would become negative: nothing would route\n"), "{out}");
    assert!(out.contains("\n! /svc/db\n    before: /$/inet/127.1/5432\n    after:  binding fails: "), "{out}");
    assert!(out.ends_with("\n2 names would break: /svc/db, /svc/web\n"), "{out}");

    let json: Value = serde_json::from_str(
        &namer.cli(&["dtab", "up", "default", &risky, "--dry-run", "--json"]).run().code(DIFFERS).stdout,
    )
    .unwrap();
    assert_eq!(json["bound"], 3);
    let web = json["changes"].as_array().unwrap().iter().find(|c| c["name"] == "/svc/web").unwrap();
    assert_eq!(
        web,
        &json!({"name": "/svc/web", "before": "/$/inet/127.1/8080", "after": "~", "outcome": "neg", "breaks": true})
    );

    // A change that breaks nothing: status 0.
    let safe = file(
        dir.path(),
        "safe.dtab",
        "/svc/web => /$/inet/127.1/8080;/svc/api => 0.9*/$/inet/127.1/9000 & 0.1*/$/inet/127.1/9001;\
         /svc/db => /$/inet/127.1/5432",
    );
    let ok = namer.cli(&["dtab", "update", "--dry-run", "default", &safe]).run().ok();
    assert!(ok.stdout.starts_with("1 of 3 names bound in default would resolve differently:\n"), "{}", ok.stdout);
    assert!(ok.stdout.contains("after:  0.90*/$/inet/127.1/9000 & 0.10*/$/inet/127.1/9001\n"), "{}", ok.stdout);

    // Nothing was written; a stale version is reported as the conflict the update would meet.
    assert_eq!(version(&namer, "default"), "AAAAAAAAAAE=");
    namer.cli(&["dtab", "update", "--dry-run", "default", &safe, "--version", "AAAAAAAAAAA="]).run().code(CONFLICT);
    namer.cli(&["dtab", "update", "--dry-run", "default", &safe, "--version", "AAAAAAAAAAE="]).run().ok();
}

#[test]
fn delegate_asks_the_namer_and_prints_a_tree_or_namerds_json() {
    let namer = NamerProcess::start();
    namer
        .cli(&["dtab", "create", "default", "-"])
        .stdin("/svc=>/$/inet/127.1;/svc/web=>/svc/8080 | /$/fail")
        .run()
        .ok();

    let tree = namer.cli(&["delegate", "default", "/svc/web"]).run().ok().stdout;
    assert_eq!(
        tree.lines().take(3).collect::<Vec<_>>(),
        [
            "/svc/web  one of:",
            "├─ => /svc/8080  [/svc/web => /svc/8080 | /$/fail]",
            "│  └─ /$/inet/127.1/8080  bound /$/inet/127.1/8080  127.0.0.1:8080  [/svc => /$/inet/127.1]",
        ]
    );
    let json = namer.cli(&["delegate", "default", "/svc/web", "--json"]).run().ok().stdout;
    let (status, raw) = namer.get("/api/1/delegate/default?path=/svc/web");
    assert_eq!((status, json.trim_end()), (200, raw.as_str()), "the namer's JSON, as sent");

    // An extra dtab goes after the namespace's, so it wins.
    let over = namer.cli(&["delegate", "default", "/svc/web", "--dtab", "/svc/web=>/$/nil"]).run().ok().stdout;
    assert!(over.starts_with("/svc/web  one of:\n├─ => /$/nil  $ empty  [/svc/web => /$/nil]\n"), "{over}");

    let bad = namer.cli(&["delegate", "default", "svc/web"]).run().code(INVALID);
    assert_eq!(bad.stderr, "error: invalid path: expected '/' but found 's'\n  svc/web\n  ^\n");
    namer.cli(&["delegate", "default", "/svc/web", "--dtab", "/a=>"]).run().code(INVALID);
    // Offline, as before.
    let offline = Cli::new(&["delegate", "--dtab", "/a=>/$/inet/127.0.0.1/1", "/a"]).run().ok().stdout;
    assert_eq!(
        offline,
        "/a\n└─ /$/inet/127.0.0.1/1  bound /$/inet/127.0.0.1/1  127.0.0.1:1  [/a => /$/inet/127.0.0.1/1]\n"
    );
    Cli::new(&["delegate", "/a"]).run().code(ERROR).one_line_error("give the dtab");
}

#[test]
fn an_https_namer_that_requires_client_certificates_is_reached_with_them_and_only_with_them() {
    let dir = tempfile::tempdir().unwrap();
    let (namer_ca, client_ca) =
        (waymark_test_support::TestCa::new("namers").unwrap(), waymark_test_support::TestCa::new("operators").unwrap());
    let (server_cert, server_key) = namer_ca.issue(&["127.0.0.1"]).unwrap().write_pem(dir.path(), "namer");
    let operators = client_ca.write_pem(dir.path(), "operators");
    let namer = NamerProcess::start_https(&format!(
        "{{cert_path: {server_cert}, key_path: {server_key}, client_ca_path: {operators}}}"
    ));
    assert!(namer.url.starts_with("https://127.0.0.1:"), "{}", namer.url);
    let ca = namer_ca.write_pem(dir.path(), "namer-ca");
    let (cert, key) = client_ca.issue(&["operator"]).unwrap().write_pem(dir.path(), "operator");
    let routes = file(dir.path(), "routes.dtab", ROUTES);

    let with_identity = ["--ca-cert", ca.as_str(), "--cert", cert.as_str(), "--key", key.as_str()];
    namer.cli(&[&["dtab", "create", "default", &routes][..], &with_identity].concat()).run().ok();
    assert_eq!(namer.cli(&[&["dtab", "list"][..], &with_identity].concat()).run().ok().stdout, "default\n");
    // The same, from the environment.
    let listed = namer
        .cli(&["dtab", "list"])
        .env("WAYMARK_NAMER_CA", &ca)
        .env("WAYMARK_NAMER_CERT", &cert)
        .env("WAYMARK_NAMER_KEY", &key)
        .run()
        .ok();
    assert_eq!(listed.stdout, "default\n");

    // Without a client certificate the namer will not talk; without the CA the namer is not trusted.
    // Each says what TLS said.
    let anonymous = namer.cli(&["dtab", "list", "--ca-cert", &ca]).run().code(UNREACHABLE);
    anonymous.one_line_error("received fatal alert: CertificateRequired");
    let untrusted = namer.cli(&["dtab", "list", "--cert", &cert, "--key", &key]).run().code(UNREACHABLE);
    untrusted.one_line_error("invalid peer certificate: UnknownIssuer");
    // A certificate without its key is a usage error.
    namer.cli(&["dtab", "list", "--ca-cert", &ca, "--cert", &cert]).run().code(ERROR);
}
