//! The `quiver` binary as a user runs it: start-up, probes, shutdown, bad configuration.

use std::io::{BufRead as _, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

fn quiver() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_quiver"));
    // Tests choose every setting themselves.
    for var in [
        "DATABASE_URL",
        "QUIVER_DATA_DIR",
        "QUIVER_DATA_ADDR",
        "QUIVER_CONTROL_ADDR",
        "QUIVER_ADDR",
    ] {
        command.env_remove(var);
    }
    command.env("RUST_LOG", "info");
    command
}

/// Asserts the command failed with exactly one line on stderr, containing every `needle`.
fn assert_fails_with_one_line(output: Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        !output.status.success(),
        "expected failure, got {}: {stderr}",
        output.status
    );
    assert_eq!(lines.len(), 1, "expected one line on stderr, got:\n{stderr}");
    for needle in needles {
        assert!(lines[0].contains(needle), "{:?} does not mention {needle:?}", lines[0]);
    }
}

#[test]
fn an_unusable_data_dir_exits_non_zero_with_one_line_naming_the_flag() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").expect("write");
    let output = quiver()
        .args([
            "--data-addr",
            "127.0.0.1:0",
            "--control-addr",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(file.join("data"))
        .output()
        .expect("quiver runs");
    assert_fails_with_one_line(output, &["cannot create the data directory", "--data-dir"]);
}

#[test]
fn a_port_in_use_exits_non_zero_with_one_line_naming_the_flag() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("temp dir");
    let output = quiver()
        .args([
            "standalone",
            "--control-addr",
            "127.0.0.1:0",
            "--data-addr",
            &addr,
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .expect("quiver runs");
    assert_fails_with_one_line(output, &[&format!("cannot listen on {addr}"), "--data-addr"]);
}

#[test]
fn a_bad_database_url_exits_non_zero_with_one_line() {
    let malformed = quiver()
        .args([
            "data-plane",
            "--addr",
            "127.0.0.1:0",
            "--database-url",
            "mysql://root@localhost/quiver",
        ])
        .output()
        .expect("quiver runs");
    assert_fails_with_one_line(malformed, &["unsupported database URL", "postgres://"]);

    let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let unreachable = quiver()
        .args(["control-plane", "--addr", "127.0.0.1:0", "--database-url"])
        .arg(format!("postgres://quiver:s3cret@127.0.0.1:{port}/quiver"))
        .output()
        .expect("quiver runs");
    let stderr = String::from_utf8_lossy(&unreachable.stderr).to_string();
    assert!(!stderr.contains("s3cret"), "the password leaked: {stderr}");
    assert_fails_with_one_line(unreachable, &["unreachable", "DATABASE_URL"]);
}

/// A standalone quiver on free ports; killed on drop if a test fails early.
struct Standalone {
    child: Child,
    data: String,
    control: String,
    log: std::sync::mpsc::Receiver<Value>,
    _dir: tempfile::TempDir,
}

impl Standalone {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut child = quiver()
            .args([
                "--log-format",
                "json",
                "--data-addr",
                "127.0.0.1:0",
                "--control-addr",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(dir.path())
            .stderr(Stdio::piped())
            .spawn()
            .expect("quiver starts");
        let (tx, log) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let event =
                    serde_json::from_str(&line).unwrap_or_else(|_| panic!("a log line that is not JSON: {line}"));
                if tx.send(event).is_err() {
                    break;
                }
            }
        });
        let up = wait_for(&log, "quiver standalone is up");
        let field = |name: &str| up[name].as_str().unwrap_or_else(|| panic!("{name} in {up}")).to_owned();
        Self {
            data: field("data_api"),
            control: field("control_api"),
            child,
            log,
            _dir: dir,
        }
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(log: &std::sync::mpsc::Receiver<Value>, message: &str) -> Value {
    loop {
        let event = log
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no log line {message:?} within 30 s"));
        if event["message"] == message {
            return event;
        }
    }
}

#[tokio::test]
async fn standalone_answers_probes_on_both_listeners_and_stops_cleanly_on_sigterm() {
    let mut quiver = Standalone::start();
    let http = reqwest::Client::new();
    for base in [&quiver.data, &quiver.control] {
        let health = http.get(format!("{base}/healthz")).send().await.expect("healthz");
        assert_eq!(health.status(), 200);
        assert!(health.headers().contains_key("x-request-id"));
        let ready: Value = http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .expect("readyz")
            .json()
            .await
            .expect("json");
        assert_eq!(ready["checks"]["storage"], "ok", "{ready}");

        let missing = http.get(format!("{base}/no/such/route")).send().await.expect("404");
        assert_eq!(missing.status(), 404);
        let body: Value = missing.json().await.expect("envelope");
        assert_eq!(body["error"]["code"], "NOT_FOUND");
    }
    // A client's own request id is kept and echoed.
    let echoed = http
        .get(format!("{}/healthz", quiver.data))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .expect("healthz");
    assert_eq!(echoed.headers()["x-request-id"], "trace-me-42");

    kill(Pid::from_raw(quiver.child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    wait_for(&quiver.log, "shut down cleanly");
    let status = quiver.child.wait().expect("quiver exits");
    assert!(status.success(), "SIGTERM should end quiver cleanly, got {status}");
}

#[test]
fn migrate_prepares_a_fresh_data_dir_and_is_idempotent() {
    let dir = tempfile::tempdir().expect("temp dir");
    for _ in 0..2 {
        let output = quiver()
            .arg("migrate")
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .expect("quiver runs");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    assert!(dir.path().join("quiver.db").exists());
}

#[test]
fn help_explains_every_standalone_flag_and_its_environment_variable() {
    let output = quiver().arg("--help").output().expect("quiver runs");
    let help = String::from_utf8_lossy(&output.stdout);
    for expected in [
        "--data-dir",
        "QUIVER_DATA_DIR",
        "--data-addr",
        "QUIVER_DATA_ADDR",
        "--control-addr",
        "QUIVER_CONTROL_ADDR",
        "control-plane",
        "data-plane",
        "migrate",
    ] {
        assert!(help.contains(expected), "--help does not mention {expected}:\n{help}");
    }
}
