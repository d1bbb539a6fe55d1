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
    // Cluster commands need these; tests that reach them point at nothing on purpose.
    command.env("REDIS_URL", "redis://127.0.0.1:1");
    command.env("QUIVER_JWT_SECRET", "a-test-secret-of-at-least-32-bytes");
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

/// An index memory too small for any index is refused at start, saying how much to give.
#[test]
fn an_index_memory_too_small_for_any_index_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = quiver()
        .args(["--index-memory", "16MiB", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("quiver runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("--index-memory") && stderr.contains("at least 64MiB"),
        "{stderr}"
    );
}

/// Embedding settings every request would fail on, and a console directory with no
/// console in it, are refused at start.
#[test]
fn unusable_embedding_and_console_settings_exit_non_zero_with_one_line_naming_the_flag() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (flag, value, needle) in [
        ("--default-embedding-model", "foo", "--default-embedding-model"),
        ("--default-embedding-model", "local/nope", "--default-embedding-model"),
        ("--openai-base-url", "api.openai.com/v1", "--openai-base-url"),
        ("--console-dir", "/nonexistent/console", "--console-dir"),
    ] {
        let output = quiver()
            .args([
                "--data-addr",
                "127.0.0.1:0",
                "--control-addr",
                "127.0.0.1:0",
                flag,
                value,
                "--data-dir",
            ])
            .arg(dir.path())
            .output()
            .expect("quiver runs");
        assert_fails_with_one_line(output, &[needle]);
    }
    let output = quiver()
        .args(["--embed-timeout", "0", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("quiver runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--embed-timeout"));
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
    /// Every log line so far, for scans.
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    dir: tempfile::TempDir,
}

impl Standalone {
    fn start() -> Self {
        Self::start_in(tempfile::tempdir().expect("temp dir"))
    }

    /// Starts on an existing data dir (a restart).
    fn start_in(dir: tempfile::TempDir) -> Self {
        Self::start_with(dir, &[])
    }

    /// Starts on a data dir with extra arguments.
    fn start_with(dir: tempfile::TempDir, extra: &[&str]) -> Self {
        let mut child = quiver()
            .args([
                "--log-format",
                "json",
                "--data-addr",
                "127.0.0.1:0",
                "--control-addr",
                "127.0.0.1:0",
            ])
            .args(extra)
            .arg("--data-dir")
            .arg(dir.path())
            .stderr(Stdio::piped())
            .spawn()
            .expect("quiver starts");
        let (tx, log) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = std::sync::Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                kept.lock().expect("not poisoned").push(line.clone());
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
            lines,
            dir,
        }
    }
}

impl Standalone {
    /// Kills the process with SIGKILL and hands back its data dir.
    fn sigkill(mut self) -> tempfile::TempDir {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL).expect("SIGKILL");
        self.child.wait().expect("exit");
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"))
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

        let missing = http.get(format!("{base}/v1/no/such/route")).send().await.expect("404");
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

/// A shutdown waits for requests in flight; a second signal stops it at once, with
/// exit status 130, and its log lines are written out all the same.
#[tokio::test]
async fn a_second_signal_stops_a_shutdown_at_once_and_its_lines_are_logged() {
    use std::io::Write as _;
    let mut quiver = Standalone::start_with(tempfile::tempdir().expect("temp dir"), &["--pull-models=false"]);
    let (_, key) = provision(
        &reqwest::Client::new(),
        &quiver.control,
        "signals@example.com",
        "correct horse battery",
        serde_json::json!({"name": "p", "dimension": 3, "metric": "euclidean"}),
    )
    .await;
    // An upsert whose body never finishes keeps the shutdown waiting (up to 30 s).
    let addr = quiver.data.trim_start_matches("http://").to_owned();
    let mut held = std::net::TcpStream::connect(&addr).expect("connect");
    let head = format!(
        "POST /v1/vectors/upsert HTTP/1.1\r\nhost: x\r\nx-api-key: {key}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{{"
    );
    held.write_all(head.as_bytes()).expect("write");
    std::thread::sleep(Duration::from_millis(300));
    let pid = Pid::from_raw(quiver.child.id() as i32);
    kill(pid, Signal::SIGTERM).expect("SIGTERM");
    wait_for(
        &quiver.log,
        "shutting down: finishing in-flight requests (a second signal stops at once)",
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        quiver.child.try_wait().expect("status").is_none(),
        "still draining the held request"
    );
    kill(pid, Signal::SIGTERM).expect("second SIGTERM");
    wait_for(
        &quiver.log,
        "a second signal: stopping without waiting for requests still running",
    );
    let status = quiver.child.wait().expect("quiver exits");
    assert_eq!(status.code(), Some(130), "{status}");
    drop(held);
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

/// Signs up, creates a project from `project` and an admin key over HTTP; returns
/// the project id and the key.
async fn provision(
    http: &reqwest::Client,
    control: &str,
    email: &str,
    password: &str,
    project: Value,
) -> (String, String) {
    let call = |path: String, session: Option<&str>, body: Value| {
        let mut request = http.post(format!("{control}{path}")).json(&body);
        if let Some(session) = session {
            request = request.bearer_auth(session);
        }
        async move {
            let response = request.send().await.expect("the control plane answers");
            assert!(response.status().is_success(), "{path}: {}", response.status());
            response.json::<Value>().await.expect("json")
        }
    };
    let signup = call(
        "/v1/auth/signup".into(),
        None,
        serde_json::json!({"email": email, "password": password}),
    )
    .await;
    let session = signup["token"].as_str().expect("token").to_owned();
    let created = call("/v1/projects".into(), Some(&session), project).await;
    let project_id = created["id"].as_str().expect("id").to_owned();
    let key = call(
        format!("/v1/projects/{project_id}/keys"),
        Some(&session),
        serde_json::json!({"label": "api", "role": "admin"}),
    )
    .await;
    (project_id, key["key"].as_str().expect("key").to_owned())
}

/// `keys list` shows each key's id, and `keys revoke` takes it (or the key's prefix,
/// `qv_live_<id>`): the running server refuses the key within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_listed_by_the_cli_is_revoked_by_the_id_it_shows() {
    let server = Standalone::start();
    let http = reqwest::Client::new();
    let (project_id, api_key) = provision(
        &http,
        &server.control,
        "revoke@example.com",
        "correct horse battery staple",
        serde_json::json!({"name": "p", "dimension": 4, "metric": "cosine"}),
    )
    .await;
    let listed = quiver()
        .args(["keys", "list", "--project", &project_id, "--data-dir"])
        .arg(server.dir.path())
        .output()
        .expect("quiver keys list runs");
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let listing = String::from_utf8(listed.stdout).expect("utf-8");
    let row = listing
        .lines()
        .find(|line| line.contains(" api "))
        .expect("the key's row");
    let id = row.split_whitespace().next().expect("an id column");
    assert!(
        api_key.starts_with(&format!("qv_live_{id}_")),
        "{id} is {api_key}'s id: {listing}"
    );

    let status = |key: String| {
        let request = http
            .get(format!("{}/v1/namespaces", server.data))
            .header("x-api-key", key);
        async move { request.send().await.expect("the data plane answers").status().as_u16() }
    };
    assert_eq!(status(api_key.clone()).await, 200);
    for key in [format!("qv_live_{id}"), id.to_owned()] {
        let revoked = quiver()
            .args(["keys", "revoke", "--project", &project_id, "--key", &key, "--data-dir"])
            .arg(server.dir.path())
            .output()
            .expect("quiver keys revoke runs");
        if key == id {
            // Revoked already, by its prefix: a second revocation says so.
            assert_fails_with_one_line(revoked, &[id]);
        } else {
            assert!(revoked.status.success(), "{}", String::from_utf8_lossy(&revoked.stderr));
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while status(api_key.clone()).await != 401 {
        assert!(
            std::time::Instant::now() < deadline,
            "the revoked key still works after 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The answer to a top-1 search for `vector` in namespace `n`, over HTTP.
async fn nearest(http: &reqwest::Client, data: &str, key: &str, vector: [f32; 3]) -> Value {
    let response = http
        .post(format!("{data}/v1/vectors/search"))
        .header("x-api-key", key)
        .json(&serde_json::json!({"namespace": "n", "vector": vector, "top_k": 1}))
        .send()
        .await
        .expect("search");
    assert_eq!(response.status(), 200);
    response.json().await.expect("json")
}

/// Every file under `dir`, as bytes.
fn files_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("readable dir").map(|e| e.expect("entry")) {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push((path.clone(), std::fs::read(&path).expect("readable file")));
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn no_password_or_key_secret_reaches_the_data_dir_the_logs_or_an_error() {
    let mut server = Standalone::start();
    let http = reqwest::Client::new();
    let password = "Tr0ub4dor&3-horse-battery";
    let (project_id, api_key) = provision(
        &http,
        &server.control,
        "leak@example.com",
        password,
        serde_json::json!({"name": "p", "dimension": 4, "metric": "cosine"}),
    )
    .await;
    // A second key from the CLI while the server runs.
    let cli = quiver()
        .args([
            "keys",
            "create",
            "--project",
            &project_id,
            "--label",
            "cli",
            "--role",
            "app_readonly",
            "--data-dir",
        ])
        .arg(server.dir.path())
        .output()
        .expect("quiver keys runs");
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    let cli_key = String::from_utf8(cli.stdout).expect("utf-8").trim().to_owned();
    assert!(cli_key.starts_with("qv_live_"), "{cli_key}");

    // Use them every way, including the query string, and fail a few times.
    for key in [&api_key, &cli_key] {
        let ok = http
            .get(format!("{}/v1/namespaces?api_key={key}", server.data))
            .send()
            .await
            .expect("list");
        assert_eq!(ok.status(), 200);
        // Another last character (a key ending in `x` must not be "wronged" into itself).
        let last = if key.ends_with('x') { 'y' } else { 'x' };
        let wrong = format!("{}{last}", &key[..key.len() - 1]);
        let refused = http
            .get(format!("{}/v1/namespaces", server.data))
            .header("x-api-key", &wrong)
            .send()
            .await
            .expect("list");
        assert_eq!(refused.status(), 401);
        let body = refused.text().await.expect("body");
        assert!(!body.contains(&key[24..]), "an error echoed a secret: {body}");
    }
    let failed_login = http
        .post(format!("{}/v1/auth/login", server.control))
        .json(&serde_json::json!({"email": "leak@example.com", "password": format!("{password}!")}))
        .send()
        .await
        .expect("login");
    assert!(!failed_login.text().await.expect("body").contains(password));

    let listed = quiver()
        .args(["keys", "list", "--project", &project_id, "--data-dir"])
        .arg(server.dir.path())
        .output()
        .expect("quiver keys list runs");
    let listing = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(listing.contains("cli") && listing.contains("api"), "{listing}");

    kill(Pid::from_raw(server.child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    wait_for(&server.log, "shut down cleanly");
    server.child.wait().expect("exit");

    let secrets = [password, &api_key[24..], &cli_key[24..]];
    for (path, bytes) in files_under(server.dir.path()) {
        for secret in secrets {
            assert!(!contains(&bytes, secret), "{} contains a secret", path.display());
        }
    }
    let logs = server.lines.lock().expect("not poisoned").join("\n");
    for secret in secrets {
        assert!(!logs.contains(secret), "the logs contain a secret");
    }
    assert!(!listing.contains(&cli_key[24..]) && !listing.contains(&api_key[24..]));

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(server.dir.path().join("jwt-secret"))
            .expect("jwt secret")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the JWT secret is readable by its owner only");
    }
}

#[test]
fn keys_cli_refuses_unknown_projects_and_roles_with_one_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let unknown = quiver()
        .args([
            "keys",
            "create",
            "--project",
            "0190a1b2-0000-7000-8000-000000000000",
            "--label",
            "x",
            "--role",
            "admin",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .expect("runs");
    assert_fails_with_one_line(unknown, &["no project", "--project"]);
    let bad_role = quiver()
        .args([
            "keys",
            "create",
            "--project",
            "0190a1b2-0000-7000-8000-000000000000",
            "--label",
            "x",
            "--role",
            "owner",
        ])
        .output()
        .expect("runs");
    assert!(!bad_role.status.success());
    assert!(String::from_utf8_lossy(&bad_role.stderr).contains("app_readonly"));
}

#[tokio::test]
async fn a_restart_after_sigkill_serves_every_acknowledged_write() {
    // Snapshots every second once 100 changes wait: the restart loads the snapshot and
    // replays what was acknowledged after it.
    let snapshots = ["--snapshot-interval", "1", "--snapshot-changes", "100"];
    let first = Standalone::start_with(tempfile::tempdir().expect("temp dir"), &snapshots);
    let http = reqwest::Client::new();
    let (_, key) = provision(
        &http,
        &first.control,
        "kill@example.com",
        "correct horse battery",
        serde_json::json!({"name": "p", "dimension": 3, "metric": "euclidean", "plan": "business"}),
    )
    .await;
    let mut acknowledged = 0;
    for batch in 0..20 {
        let vectors: Vec<Value> = (0..50)
            .map(|i| serde_json::json!({"id": format!("b{batch}-{i}"), "values": [batch as f32, i as f32, 1.0]}))
            .collect();
        let response = http
            .post(format!("{}/v1/vectors/upsert", first.data))
            .header("x-api-key", &key)
            .json(&serde_json::json!({"namespace": "n", "vectors": vectors}))
            .send()
            .await
            .expect("upsert");
        assert_eq!(response.status(), 200);
        acknowledged += 50;
        if batch == 9 {
            // Load the index, and wait for its first snapshot.
            nearest(&http, &first.data, &key, [0.0, 0.0, 1.0]).await;
            let stored = wait_for(&first.log, "index snapshot stored");
            assert_eq!(stored["seq"], 10, "{stored}");
        }
    }
    let doomed: Vec<String> = (0..10).map(|i| format!("b0-{i}")).collect();
    let deleted: Value = http
        .delete(format!("{}/v1/vectors/delete", first.data))
        .header("x-api-key", &key)
        .json(&serde_json::json!({"namespace": "n", "ids": doomed}))
        .send()
        .await
        .expect("delete")
        .json()
        .await
        .expect("json");
    assert_eq!(deleted["deleted_count"], 10, "{deleted}");
    acknowledged -= 10;
    // No graceful anything: SIGKILL, then a new process on the same data dir.
    let second = Standalone::start_with(first.sigkill(), &snapshots);
    let listed: Value = http
        .get(format!("{}/v1/namespaces", second.data))
        .header("x-api-key", &key)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(listed["namespaces"][0]["vector_count"], acknowledged);
    let found = nearest(&http, &second.data, &key, [19.0, 49.0, 1.0]).await;
    assert_eq!(
        found["matches"][0]["id"], "b19-49",
        "the last acknowledged batch is searchable: {found}"
    );
    let loaded = wait_for(&second.log, "index loaded");
    assert!(
        loaded["from"].as_str().is_some_and(|from| from.starts_with("Snapshot")),
        "loaded from the snapshot: {loaded}"
    );
    let near_deleted = nearest(&http, &second.data, &key, [0.0, 0.0, 1.0]).await;
    assert_eq!(
        near_deleted["matches"][0]["id"], "b1-0",
        "the acknowledged delete holds: {near_deleted}"
    );
}
