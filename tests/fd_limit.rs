//! A `waymark namer` process run out of file descriptors by connections: it keeps accepting
//! without spinning, its `io.l5d.fs` namer keeps the last good routes instead of publishing
//! `neg`, and it serves again as soon as the connections go.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::WAYMARK;
use support::mesh::free_port;

/// The namer's soft and hard open-file limit in this test.
const OPEN_FILES: u32 = 256;

/// CPU time the process used so far, in clock ticks (user + system).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the namer is running");
    // Fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn until(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: namer\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    std::io::Read::read_to_string(&mut stream, &mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    Some((head.split(' ').nth(1)?.parse().ok()?, body.to_string()))
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0.0)
}

#[test]
fn a_namer_out_of_file_descriptors_keeps_accepting_without_spinning_and_keeps_its_routes() {
    let dir = tempfile::tempdir().unwrap();
    let disco = dir.path().join("disco");
    std::fs::create_dir(&disco).unwrap();
    std::fs::write(disco.join("web"), "127.0.0.1 8080\n").unwrap();
    let (http, mesh, admin) = (free_port(), free_port(), free_port());
    let config = dir.path().join("namer.yaml");
    // A connection limit far above the file limit, so that accepting does run out.
    std::fs::write(
        &config,
        format!(
            "storage:\n  kind: memory\n  namespaces:\n    default: /svc => /#/io.l5d.fs\n\
             namers:\n  - kind: io.l5d.fs\n    root_dir: {}\n    poll_interval_ms: 100\n\
             interfaces:\n  - kind: io.l5d.httpController\n    port: {http}\n    limits: {{max_connections: 5000, header_read_timeout_ms: 60000}}\n\
             \x20 - {{kind: io.l5d.mesh, port: {mesh}}}\nadmin: {{port: {admin}}}\nlogging: {{level: error}}\n",
            disco.display()
        ),
    )
    .unwrap();
    let mut namer = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {OPEN_FILES} && exec \"$0\" namer --config \"$1\""))
        .arg(WAYMARK)
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = namer.id();
    until("the namer to serve", Duration::from_secs(60), || get(http, "/api/1/dtabs").is_some());

    // A watch of /svc/web, opened before the attack: every tree it is sent, by line.
    let mut watch = TcpStream::connect(("127.0.0.1", http)).unwrap();
    write!(watch, "GET /api/1/bind/default?path=/svc/web&watch=true HTTP/1.1\r\nHost: namer\r\n\r\n").unwrap();
    let (trees_tx, trees) = mpsc::channel::<String>();
    let reader = BufReader::new(watch.try_clone().unwrap());
    std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            if line.starts_with('{') && trees_tx.send(line).is_err() {
                return;
            }
        }
    });
    let first = trees.recv_timeout(Duration::from_secs(30)).expect("a first tree");
    assert!(first.contains("/#/io.l5d.fs/web"), "{first}");

    // The attack: far more one-byte connections than the process may open files, until the
    // listen queue is full too (a connection attempt then goes unanswered).
    let target = ([127, 0, 0, 1], http).into();
    let mut attack = Vec::new();
    while attack.len() < 2 * OPEN_FILES as usize {
        let Ok(mut stream) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) else { break };
        stream.write_all(b"G").unwrap();
        attack.push(stream);
    }
    assert!(attack.len() > OPEN_FILES as usize, "{} connections", attack.len());
    // Out of descriptors now, the namer must not spin on accept: it may use at most half a
    // core (a spinning accept loop uses a whole one).
    std::thread::sleep(Duration::from_secs(1));
    let (ticks, started) = (cpu_ticks(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let used = (cpu_ticks(pid) - ticks) as f64 / 100.0 / started.elapsed().as_secs_f64();
    assert!(used < 0.5, "the namer used {:.0}% of a core while out of file descriptors", used * 100.0);
    // Its fs namer cannot read the directory meanwhile, and must not publish that as routing.
    while let Ok(tree) = trees.try_recv() {
        assert!(!tree.contains("\"neg\""), "published while out of file descriptors: {tree}");
    }

    drop(attack);
    until("the namer to serve again", Duration::from_secs(60), || {
        get(http, "/api/1/dtabs").is_some_and(|(status, _)| status == 200)
    });
    let (_, metrics) = get(admin, "/metrics").expect("the admin port answers");
    let exhausted = r#"waymark_namer_accept_errors_total{server="http",reason="out_of_file_descriptors"}"#;
    assert!(metric(&metrics, exhausted) >= 1.0, "{metrics}");
    let failures = r#"waymark_namer_interpreter_namer_read_failures_total{namer="/#/io.l5d.fs"}"#;
    assert!(metric(&metrics, failures) >= 1.0, "the fs namer saw the failures: {metrics}");
    let (status, bound) = get(http, "/api/1/bind/default?path=/svc/web").unwrap();
    assert!(status == 200 && bound.contains("8080"), "{status} {bound}");
    while let Ok(tree) = trees.try_recv() {
        assert!(!tree.contains("\"neg\""), "{tree}");
    }
    let _ = namer.kill();
    let _ = namer.wait();
}
