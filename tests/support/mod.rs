//! Runs the real `waymark` binary: as a namer process on free ports, and as the CLI against
//! it, with a clean environment.

#![allow(dead_code, unreachable_pub)]

pub mod mesh;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The binary under test.
pub const WAYMARK: &str = env!("CARGO_BIN_EXE_waymark");

/// Variables that would point the CLI elsewhere or change its output.
const CLEARED: [&str; 13] = [
    "WAYMARK_NAMER_URL",
    "NAMERCTL_BASE_URL",
    "WAYMARK_NAMER_CA",
    "WAYMARK_NAMER_CERT",
    "WAYMARK_NAMER_KEY",
    "VISUAL",
    "EDITOR",
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "all_proxy",
];

/// A `waymark namer` process with an in-memory store, killed on drop.
pub struct NamerProcess {
    child: Child,
    /// The HTTP API's base URL.
    pub url: String,
    _dir: tempfile::TempDir,
}

impl NamerProcess {
    /// A namer with no namers configured beyond the built-in `/$/` ones.
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// A namer with extra top-level YAML (such as `namers:`).
    pub fn start_with(extra_yaml: &str) -> Self {
        Self::launch("", extra_yaml)
    }

    /// A namer whose HTTP API serves HTTPS with `tls` (YAML) as its settings.
    pub fn start_https(tls: &str) -> Self {
        let mut namer = Self::launch(&format!(", tls: {tls}"), "");
        namer.url = namer.url.replacen("http://", "https://", 1);
        namer
    }

    fn launch(http_tls: &str, extra_yaml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("namer.yaml");
        std::fs::write(
            &config,
            format!(
                "interfaces: [{{kind: io.l5d.httpController, port: 0{http_tls}}}, {{kind: io.l5d.mesh, port: 0}}]\n\
                 admin: {{port: 0}}\n\
                 logging: {{level: info, format: json}}\n{extra_yaml}"
            ),
        )
        .unwrap();
        let mut child = Command::new(WAYMARK)
            .arg("namer")
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the namer starts");
        // The log says where the HTTP API listens (port 0 picks a free one).
        let mut log = BufReader::new(child.stderr.take().unwrap());
        let mut url = None;
        let mut line = String::new();
        while url.is_none() {
            line.clear();
            if log.read_line(&mut line).unwrap() == 0 {
                let status = child.wait().unwrap();
                panic!("the namer exited ({status}) before listening");
            }
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
            if entry["fields"]["message"] == "namerd HTTP API listening" {
                let addr = entry["fields"]["addr"].as_str().unwrap();
                let addr = addr.trim_start_matches("Some(").trim_end_matches(')');
                url = Some(format!("http://{addr}"));
            }
        }
        // Keep draining the log so that the namer never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut log, &mut std::io::sink()));
        NamerProcess { child, url: url.unwrap(), _dir: dir }
    }

    /// A `waymark` command pointed at this namer through `--base-url`.
    pub fn cli(&self, args: &[&str]) -> Cli {
        let mut cli = Cli::new(args);
        cli.command.arg("--base-url").arg(&self.url);
        cli
    }

    /// A plain HTTP GET on the namer; the status and body.
    pub fn get(&self, path_and_query: &str) -> (u16, String) {
        http_get(&self.url, path_and_query)
    }
}

impl Drop for NamerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The outcome of one CLI run.
#[derive(Debug)]
pub struct Run {
    /// The exit status.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// A `waymark` invocation being prepared.
pub struct Cli {
    command: Command,
    stdin: Option<String>,
}

impl Cli {
    /// `waymark ARGS` in a fresh working directory, without the variables that would change
    /// where it goes, as user `tester`.
    pub fn new(args: &[&str]) -> Self {
        let mut command = Command::new(WAYMARK);
        command.args(args);
        for variable in CLEARED {
            command.env_remove(variable);
        }
        command.env("USER", "tester").env_remove("NO_COLOR");
        Cli { command, stdin: None }
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Self {
        self.command.env(key, value);
        self
    }

    /// Runs in `dir`.
    pub fn dir(mut self, dir: &Path) -> Self {
        self.command.current_dir(dir);
        self
    }

    /// Feeds `text` on standard input.
    pub fn stdin(mut self, text: &str) -> Self {
        self.stdin = Some(text.to_string());
        self
    }

    /// Runs to completion.
    pub fn run(mut self) -> Run {
        self.command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        if self.command.get_current_dir().is_none() {
            self.command.current_dir(std::env::temp_dir());
        }
        let mut child = self.command.spawn().expect("waymark runs");
        let mut stdin = child.stdin.take().unwrap();
        let text = self.stdin.take().unwrap_or_default();
        // A command that does not read its input may exit first: a broken pipe is fine.
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(text.as_bytes());
        });
        let output = child.wait_with_output().unwrap();
        writer.join().unwrap();
        Run {
            code: output.status.code().expect("exited, not killed"),
            stdout: String::from_utf8(output.stdout).unwrap(),
            stderr: String::from_utf8(output.stderr).unwrap(),
        }
    }
}

impl Run {
    /// Asserts the exit status, showing the output if it differs.
    #[track_caller]
    pub fn code(self, expected: i32) -> Self {
        assert_eq!(self.code, expected, "exit status; stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }

    /// Asserts success.
    #[track_caller]
    pub fn ok(self) -> Self {
        self.code(0)
    }

    /// Asserts that standard error is exactly one line, `error: ...` containing `text`.
    #[track_caller]
    pub fn one_line_error(self, text: &str) -> Self {
        assert!(
            self.stderr.starts_with("error: ") && self.stderr.ends_with('\n') && self.stderr.lines().count() == 1,
            "expected one error line, got:\n{}",
            self.stderr
        );
        assert!(self.stderr.contains(text), "expected {text:?} in:\n{}", self.stderr);
        self
    }
}

/// A minimal HTTP/1.1 GET, for requests the CLI does not make (such as binding a name so
/// that the namer counts it as bound).
pub fn http_get(base: &str, path_and_query: &str) -> (u16, String) {
    let authority = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(authority).unwrap();
    write!(stream, "GET {path_and_query} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    (status, if chunked { dechunk(body) } else { body.to_string() })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// Writes `text` to `name` in `dir`, returning the path as a string for arguments.
pub fn file(dir: &Path, name: &str, text: &str) -> String {
    let path: PathBuf = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// Writes an executable shell script.
pub fn script(dir: &Path, name: &str, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = file(dir, name, &format!("#!/bin/sh\nset -e\n{body}"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}
