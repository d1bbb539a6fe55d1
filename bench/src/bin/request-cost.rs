//! What a search request costs the server beyond the search itself, counted in
//! instructions rather than seconds, so that a change to the request path can be
//! measured to the percent on a machine whose speed drifts.
//!
//! Run it under callgrind, which counts every instruction each function executes:
//!
//! ```text
//! cargo build --release -p quiver-bench --bin request-cost
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cost.%p target/release/request-cost --callgrind
//! callgrind_annotate --inclusive=yes /tmp/cost.<pid>.http | head -60
//! ```
//!
//! The tool serves a small namespace the way a pod does (SQLite store, JSON log lines,
//! the local rate-limit budget), then makes `--requests` searches over one keep-alive
//! connection from a plain blocking client, and as many searches of the same queries on
//! the index in-process. With `--callgrind` it asks callgrind to count each phase alone
//! (`callgrind_control --zero` before, `--dump` after, into the files `….http` and
//! `….raw`), so the first's total less the second's is the request path: axum, hyper,
//! the JSON, auth, limits, the log line, the kernel calls' user-space side, and the
//! client's own share (its functions are listed apart in the dump). Without
//! `--callgrind` it prints the CPU time of each phase.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use quiver_bench::{clustered_unit_vectors, cpu_seconds};
use quiver_data_plane::limits::LocalBudget;
use serde_json::{Value, json};

#[derive(Debug, Parser)]
struct Args {
    /// Vectors in the namespace (a small index keeps the search's share small).
    #[arg(long, default_value_t = 2_000)]
    vectors: usize,
    /// Dimensions.
    #[arg(long, default_value_t = 768)]
    dim: usize,
    /// Searches in each phase.
    #[arg(long, default_value_t = 500)]
    requests: usize,
    /// Send the query as a base64 string of little-endian f32s instead of JSON numbers.
    #[arg(long)]
    base64: bool,
    /// Ask callgrind (this process runs under `valgrind --tool=callgrind`) to count the
    /// HTTP phase and the raw phase alone, each into a dump of its own.
    #[arg(long)]
    callgrind: bool,
}

const TOP_K: usize = 10;
const WARM_UP: usize = 50;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // Logs as a pod logs (`--log-format json`: a line per request), into a file.
    let log = std::fs::File::create(dir.path().join("quiver.log"))?;
    let _log = quiver_common::telemetry::init_with(quiver_common::telemetry::LogFormat::Json, log, false);
    let quiver_bench::Served {
        indexes,
        server,
        project,
        key,
        ..
    } = quiver_bench::serve(dir.path(), Arc::new(LocalBudget::default()), 1 << 30, args.dim).await?;

    let data = clustered_unit_vectors(args.vectors, args.dim, 100, 1);
    let queries = clustered_unit_vectors(256, args.dim, 100, 2);
    let http = reqwest::Client::new();
    for (c, chunk) in data.chunks(500).enumerate() {
        let batch: Vec<Value> = chunk
            .iter()
            .enumerate()
            .map(|(i, v)| json!({"id": (c * 500 + i).to_string(), "values": v}))
            .collect();
        let response = http
            .post(format!("http://{server}/v1/vectors/upsert"))
            .header("x-api-key", &key)
            .json(&json!({"namespace": "cost", "vectors": batch}))
            .send()
            .await?;
        anyhow::ensure!(response.status() == 200, "upsert answered {}", response.status());
    }

    let requests: Arc<Vec<Vec<u8>>> = Arc::new(
        queries
            .iter()
            .map(|q| quiver_bench::search_request(server, &key, &search_body(q, args.base64)).into_bytes())
            .collect(),
    );
    // The first search loads the index, which starts a tuning of its search width:
    // count after it.
    let mut client = Client::connect(server)?;
    client.search(&requests[0])?;
    let started = Instant::now();
    while indexes
        .status(project.id, "cost")
        .await
        .is_some_and(|status| status.tuning)
    {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(600), "still tuning after 600 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let raw = indexes
        .open(&project, "cost")
        .await?
        .ok_or_else(|| anyhow::anyhow!("the served index is gone"))?;
    eprintln!(
        "{} × {}-d vectors, ef {}, query as {}",
        args.vectors,
        args.dim,
        raw.index.ef(),
        if args.base64 { "base64" } else { "JSON numbers" }
    );

    let (n, callgrind) = (args.requests, args.callgrind);
    let http_cpu = tokio::task::spawn_blocking(move || {
        for request in requests.iter().cycle().take(WARM_UP) {
            client.search(request)?;
        }
        let phase = Phase::start(callgrind)?;
        for request in requests.iter().cycle().take(n) {
            client.search(request)?;
        }
        phase.end("http")
    })
    .await??;
    let raw_cpu = tokio::task::spawn_blocking(move || {
        let search = |q: &Vec<f32>| {
            raw.index
                .search(q, TOP_K, &quiver_engine::Filter::All, false)
                .map(|(matches, _)| matches.len())
        };
        for q in queries.iter().cycle().take(WARM_UP) {
            search(q)?;
        }
        let phase = Phase::start(callgrind)?;
        for q in queries.iter().cycle().take(n) {
            search(q)?;
        }
        phase.end("raw")
    })
    .await??;
    println!(
        "CPU per search: over HTTP {:.0} µs (server and client), raw {:.0} µs",
        http_cpu / n as f64 * 1e6,
        raw_cpu / n as f64 * 1e6
    );
    Ok(())
}

fn search_body(q: &[f32], base64: bool) -> String {
    let vector = if base64 {
        use base64::Engine as _;
        let bytes: Vec<u8> = q.iter().flat_map(|x| x.to_le_bytes()).collect();
        json!(base64::engine::general_purpose::STANDARD.encode(bytes))
    } else {
        json!(q)
    };
    json!({"namespace": "cost", "vector": vector, "top_k": TOP_K, "include_metadata": false}).to_string()
}

/// A blocking HTTP/1.1 client on one keep-alive connection.
struct Client {
    stream: std::net::TcpStream,
    buffer: Vec<u8>,
    /// Where each read lands before it joins `buffer`.
    chunk: Box<[u8]>,
}

impl Client {
    fn connect(server: SocketAddr) -> anyhow::Result<Self> {
        let stream = std::net::TcpStream::connect(server)?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buffer: Vec::with_capacity(16 << 10),
            chunk: vec![0; 16 << 10].into_boxed_slice(),
        })
    }

    /// Sends one search and reads its response, which must be a 200 with `TOP_K` matches.
    fn search(&mut self, request: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(request)?;
        self.buffer.clear();
        let (head, length) = loop {
            let read = self.stream.read(&mut self.chunk)?;
            anyhow::ensure!(read > 0, "the server closed the connection");
            self.buffer.extend_from_slice(&self.chunk[..read]);
            if let Some(head) = quiver_bench::response_head(&self.buffer)? {
                break head;
            }
        };
        while self.buffer.len() < head + length {
            let read = self.stream.read(&mut self.chunk)?;
            anyhow::ensure!(read > 0, "the server closed the connection mid-response");
            self.buffer.extend_from_slice(&self.chunk[..read]);
        }
        let answer: Value = serde_json::from_slice(&self.buffer[head..head + length])?;
        let found = answer["matches"].as_array().map_or(0, Vec::len);
        anyhow::ensure!(found == TOP_K, "a search found {found} matches, not {TOP_K}");
        Ok(())
    }
}

/// One measured phase: the process's CPU time, and under callgrind its own counts.
struct Phase {
    callgrind: bool,
    cpu: f64,
}

impl Phase {
    fn start(callgrind: bool) -> anyhow::Result<Self> {
        if callgrind {
            callgrind_control(&["--zero"])?;
        }
        Ok(Self {
            callgrind,
            cpu: cpu_seconds(false),
        })
    }

    /// Ends the phase: its CPU seconds; under callgrind its counts go to a dump `name`.
    fn end(self, name: &str) -> anyhow::Result<f64> {
        let cpu = cpu_seconds(false) - self.cpu;
        if self.callgrind {
            callgrind_control(&[&format!("--dump={name}")])?;
        }
        Ok(cpu)
    }
}

/// Runs `callgrind_control` on this process. Callgrind takes the command only while
/// one of the process's threads runs, so this thread spins until it is done instead
/// of blocking in `wait`.
fn callgrind_control(command: &[&str]) -> anyhow::Result<()> {
    let mut child = std::process::Command::new("callgrind_control")
        .args(command)
        .arg(std::process::id().to_string())
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::hint::spin_loop();
    };
    anyhow::ensure!(status.success(), "callgrind_control {command:?} failed: {status}");
    Ok(())
}
