//! Measures the vector API over HTTP on this machine: upsert throughput, search QPS and
//! p50/p99 latency at a given concurrency with recall@10 (the query vector sent as JSON
//! numbers, and as base64), index memory per vector, and the QPS raw usearch reaches
//! in-process on the very index the server searches (from as many threads as clients,
//! and from one per core), with the CPU each spends per search. The ways of searching
//! take turns in short rounds, and the report gives each round's HTTP/raw ratio as
//! well as the whole run's, and the share of CPU time the hypervisor stole meanwhile.
//!
//! `cargo run --release -p quiver-bench --bin vector-load -- --vectors 100000 --dim 768`

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use clap::Parser;
use quiver_bench::{MachineTicks, brute_force, clustered_unit_vectors, cpu_seconds, percentile};
use quiver_common::domain::ProjectId;
use serde_json::{Value, json};

#[derive(Debug, Parser)]
struct Args {
    /// Vectors to load.
    #[arg(long, default_value_t = 100_000)]
    vectors: usize,
    /// Dimensions.
    #[arg(long, default_value_t = 768)]
    dim: usize,
    /// Vectors per upsert request.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Concurrent search clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Seconds of searching for each of HTTP with JSON numbers, HTTP with base64, and
    /// raw, split over `--rounds`.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Rounds the three ways of searching alternate over, each way once a round, the
    /// order turned by one each round. Short rounds put the three under the same drift
    /// of this shared machine's speed.
    #[arg(long, default_value_t = 15)]
    rounds: u32,
    /// How Linux schedules the load client's thread: as any other thread (`normal`,
    /// the default), or `batch` (`SCHED_BATCH`: it does not preempt a search when a
    /// response wakes it, so responses wait for the scheduler's next turn).
    #[arg(long, value_enum, default_value_t = ClientPolicy::Normal)]
    client_policy: ClientPolicy,
    /// Queries whose recall@10 is checked against brute force.
    #[arg(long, default_value_t = 200)]
    recall_queries: usize,
    /// Vectors upserted, after the searches, into the namespace while it is loaded (the
    /// first upserts go to a namespace no pod holds in memory yet).
    #[arg(long, default_value_t = 2_000)]
    live_upserts: usize,
    /// The upserts into the loaded namespace give existing records new vectors (the
    /// first `--live-upserts` records) instead of adding records.
    #[arg(long)]
    live_replace: bool,
    /// After the replacing upserts (`--live-replace`), rebuild the worn graph aside as the
    /// maintenance round would, and compare the search width, recall and raw search
    /// time of the worn graph and the rebuilt one.
    #[arg(long, requires = "live_replace")]
    rebuild: bool,
    /// Search at this width (HNSW ef_search) instead of the one the namespace tuned
    /// itself to: to compare HTTP with raw at a given width, whichever the tuner picks.
    #[arg(long)]
    ef: Option<usize>,
    /// During the search rounds, run the server (one runtime thread) and raw usearch on
    /// the first core and the load client on the second, so that HTTP is measured
    /// without the load client taking the server's CPU, as with clients on other
    /// machines. Loading and upserts run on every core as usual.
    #[arg(long)]
    split_cores: bool,
    /// Keep the server's log (JSON, a line per request and per background task) in this
    /// file; by default it goes to a temporary directory removed at the end.
    #[arg(long)]
    log: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ClientPolicy {
    Batch,
    Normal,
}

/// A rate-limit budget that admits everything (benchmark only).
struct Unmetered;

#[async_trait::async_trait]
impl quiver_data_plane::limits::Budget for Unmetered {
    async fn take(
        &self,
        _: ProjectId,
        _: quiver_data_plane::limits::Kind,
        per_minute: u32,
        _: u32,
    ) -> quiver_data_plane::limits::Decision {
        self.peek(ProjectId::new(), quiver_data_plane::limits::Kind::Queries, per_minute)
    }

    fn peek(
        &self,
        _: ProjectId,
        _: quiver_data_plane::limits::Kind,
        per_minute: u32,
    ) -> quiver_data_plane::limits::Decision {
        quiver_data_plane::limits::Decision {
            limit: per_minute,
            remaining: u64::from(per_minute),
            reset: 0,
            retry_after: None,
        }
    }

    fn forget(&self, _: ProjectId) {}
}

#[async_trait::async_trait]
impl quiver_common::http::ReadinessCheck for Unmetered {
    fn name(&self) -> &'static str {
        "rate_limits"
    }

    async fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

/// How a search request sends its query vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    /// A JSON array of numbers.
    Numbers,
    /// A base64 string of the little-endian f32s.
    Base64,
}

impl Encoding {
    const ALL: [Encoding; 2] = [Encoding::Numbers, Encoding::Base64];

    fn name(self) -> &'static str {
        match self {
            Encoding::Numbers => "JSON numbers",
            Encoding::Base64 => "base64",
        }
    }

    /// The query vector as this encoding sends it.
    fn vector(self, q: &[f32]) -> Value {
        match self {
            Encoding::Numbers => json!(q),
            Encoding::Base64 => {
                use base64::Engine as _;
                let bytes: Vec<u8> = q.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            }
        }
    }
}

/// Upserts vectors over HTTP in batches, two requests in flight (one per core).
struct Upserter {
    http: reqwest::Client,
    base: String,
    key: String,
    batch: usize,
}

impl Upserter {
    /// The upsert bodies for `vectors`, with ids counted from `first_id`. They are
    /// written before the clock starts, as the search rounds' requests are: writing a
    /// batch's 7.7 MB of JSON on the server's two cores while the upserts are timed
    /// took much of their CPU and understated the server's rate.
    fn bodies(&self, vectors: &[Vec<f32>], first_id: usize) -> Vec<Bytes> {
        let starts: Vec<usize> = (0..vectors.len()).step_by(self.batch).collect();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per_thread = starts.len().div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            let parts: Vec<_> = starts
                .chunks(per_thread)
                .map(|starts| {
                    scope.spawn(move || {
                        starts
                            .iter()
                            .map(|&from| {
                                let to = (from + self.batch).min(vectors.len());
                                let batch: Vec<Value> = (from..to)
                                    .map(|i| json!({"id": (first_id + i).to_string(), "values": vectors[i]}))
                                    .collect();
                                Bytes::from(
                                    serde_json::to_vec(&json!({"namespace": "bench", "vectors": batch})).expect("JSON"),
                                )
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            parts
                .into_iter()
                .flat_map(|part| part.join().expect("writing bodies"))
                .collect()
        })
    }

    /// Sends `bodies` (from [`Self::bodies`]); returns the seconds it took.
    async fn upsert(&self, bodies: Vec<Bytes>) -> anyhow::Result<f64> {
        let started = Instant::now();
        let bodies = Arc::new(std::sync::Mutex::new(bodies.into_iter()));
        let mut writers = Vec::new();
        for _ in 0..2 {
            let (http, url, key, bodies) = (
                self.http.clone(),
                format!("{}/v1/vectors/upsert", self.base),
                self.key.clone(),
                Arc::clone(&bodies),
            );
            writers.push(tokio::spawn(async move {
                loop {
                    let Some(body) = bodies.lock().expect("lock").next() else {
                        break;
                    };
                    let response = http
                        .post(&url)
                        .header("x-api-key", &key)
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(body)
                        .send()
                        .await?;
                    let status = response.status();
                    anyhow::ensure!(status == 200, "upsert answered {status}: {}", response.text().await?);
                }
                anyhow::Ok(())
            }));
        }
        for writer in writers {
            writer.await??;
        }
        Ok(started.elapsed().as_secs_f64())
    }
}

/// What the search rounds of one encoding add up to.
#[derive(Default)]
struct HttpLoad {
    latencies: Vec<f64>,
    client_cpu: f64,
    process_cpu: f64,
    /// This encoding's QPS over raw's in each round (sorted once the rounds are done).
    ratios: Vec<f64>,
}

/// What the search rounds of raw usearch from one number of threads add up to.
struct RawLoad {
    threads: usize,
    done: usize,
    cpu: f64,
}

impl RawLoad {
    /// Searches a second over the `seconds` its rounds took in all.
    fn qps(&self, seconds: u64) -> f64 {
        self.done as f64 / seconds as f64
    }
}

/// A way of searching, as the rounds take turns.
#[derive(Debug, Clone, Copy)]
enum Way {
    Http(Encoding),
    /// Raw usearch, from the threads of `raws[i]`.
    Raw(usize),
}

/// Matches each search asks for.
const TOP_K: usize = 10;

/// Searches over HTTP for `duration` from `clients` concurrent clients on one thread of
/// their own (so their CPU can be told from the server's). Returns the latencies (ms),
/// the client thread's CPU seconds and the whole process's.
///
/// Each client holds one keep-alive HTTP/1.1 connection of its own and speaks it the
/// way load generators such as wrk do: each request is written from bytes built before
/// the run, and each response is read whole (status line, headers, `content-length`
/// bytes of body) and checked (a 200 whose body holds `expected` matches). The load
/// tool shares the server's two cores, so it should take as little of them as it can
/// (or, with `client_cpu`, runs on that core alone).
fn http_round(
    server: SocketAddr,
    requests: &Arc<Vec<Bytes>>,
    clients: usize,
    duration: Duration,
    policy: ClientPolicy,
    client_cpu: Option<usize>,
    expected: usize,
) -> anyhow::Result<(Vec<f64>, f64, f64)> {
    let process_before = cpu_seconds(false);
    let requests = Arc::clone(requests);
    let client = std::thread::Builder::new().name("load-client".into()).spawn(move || {
        if policy == ClientPolicy::Batch {
            stay_out_of_the_way();
        }
        if let Some(cpu) = client_cpu {
            quiver_bench::pin_thread(&[cpu])?;
        }
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async move {
            let started_cpu = cpu_seconds(true);
            let deadline = Instant::now() + duration;
            let mut tasks = Vec::new();
            for c in 0..clients {
                let requests = Arc::clone(&requests);
                tasks.push(tokio::spawn(async move {
                    let mut stream = tokio::net::TcpStream::connect(server).await?;
                    stream.set_nodelay(true)?;
                    let mut buffer = Vec::with_capacity(16 << 10);
                    let mut latencies = Vec::new();
                    let mut i = c;
                    while Instant::now() < deadline {
                        let started = Instant::now();
                        stream.write_all(&requests[i % requests.len()]).await?;
                        let body = read_response(&mut stream, &mut buffer).await?;
                        let answer: SearchAnswer = serde_json::from_slice(body)?;
                        anyhow::ensure!(
                            answer.matches.len() == expected,
                            "a search found {} matches, not {expected}",
                            answer.matches.len()
                        );
                        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
                        i += clients;
                    }
                    anyhow::Ok(latencies)
                }));
            }
            let mut latencies = Vec::new();
            for task in tasks {
                latencies.extend(task.await??);
            }
            anyhow::Ok((latencies, cpu_seconds(true) - started_cpu))
        })
    })?;
    let (latencies, client_cpu) = client
        .join()
        .map_err(|_| anyhow::anyhow!("the load client panicked"))??;
    Ok((latencies, client_cpu, cpu_seconds(false) - process_before))
}

/// What the load client checks of a search's answer.
#[derive(serde::Deserialize)]
struct SearchAnswer<'a> {
    #[serde(borrow)]
    matches: Vec<AnswerMatch<'a>>,
}

#[derive(serde::Deserialize)]
struct AnswerMatch<'a> {
    #[serde(borrow, rename = "id")]
    _id: &'a str,
}

/// Reads one HTTP/1.1 response from `stream` into `buffer` and returns its body; a
/// status other than 200, or a response without `content-length`, is an error.
async fn read_response<'b>(stream: &mut tokio::net::TcpStream, buffer: &'b mut Vec<u8>) -> anyhow::Result<&'b [u8]> {
    buffer.clear();
    let (head, length) = loop {
        if stream.read_buf(buffer).await? == 0 {
            anyhow::bail!("the server closed the connection");
        }
        if let Some(head) = quiver_bench::response_head(buffer)? {
            break head;
        }
    };
    while buffer.len() < head + length {
        if stream.read_buf(buffer).await? == 0 {
            anyhow::bail!("the server closed the connection mid-response");
        }
    }
    anyhow::ensure!(buffer.len() == head + length, "bytes after a response nobody asked for");
    Ok(&buffer[head..])
}

/// Asks Linux not to let the calling thread (the load client) preempt a running thread
/// when it wakes (`--client-policy batch`): with `SCHED_BATCH` it still gets its fair
/// share of CPU, but waits for the scheduler's next turn instead of cutting into a
/// search each time a response arrives. Measured on 2026-11-28, that wait lands in
/// the latencies (p99 2.8 times p50, against 2.0 times as a normal thread) and leaves
/// the server waiting for requests, so it is not the default.
fn stay_out_of_the_way() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread, and `param` is a valid sched_param that
    // outlives the call; the call only changes that thread's scheduling policy.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
        eprintln!(
            "could not make the load client SCHED_BATCH: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Searches the raw index from `clients` threads for `duration`: searches done and the
/// process's CPU seconds.
fn raw_round(
    raw: &Arc<quiver_engine::manager::Loaded>,
    queries: &Arc<Vec<Vec<f32>>>,
    clients: usize,
    duration: Duration,
) -> (usize, f64) {
    let before = cpu_seconds(false);
    let deadline = Instant::now() + duration;
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let (raw, queries) = (Arc::clone(raw), Arc::clone(queries));
            std::thread::spawn(move || {
                let mut done = 0usize;
                let mut i = c;
                while Instant::now() < deadline {
                    let _ = raw
                        .index
                        .search(&queries[i % queries.len()], TOP_K, &quiver_engine::Filter::All, false)
                        .expect("search");
                    done += 1;
                    i += clients;
                }
                done
            })
        })
        .collect();
    let done = threads.into_iter().map(|t| t.join().expect("thread")).sum();
    (done, cpu_seconds(false) - before)
}

fn search_body(q: &[f32], encoding: Encoding) -> Value {
    json!({"namespace": "bench", "vector": encoding.vector(q), "top_k": TOP_K, "include_metadata": false})
}

/// Waits while the namespace's search width is being tuned (up to five minutes).
async fn wait_for_tuning(indexes: &quiver_engine::IndexManager, project: ProjectId) {
    let started = Instant::now();
    while indexes
        .status(project, "bench")
        .await
        .is_some_and(|status| status.tuning)
    {
        if started.elapsed() >= Duration::from_secs(300) {
            eprintln!("warning: the search width was still being tuned after 300 s; measuring at the width in use");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Searches over HTTP with reqwest, outside the measured rounds.
struct Searcher {
    http: reqwest::Client,
    url: String,
    key: String,
}

impl Searcher {
    /// Recall@10 of `queries` against brute force over `data` (record `i` has id `i`),
    /// for each encoding. A search finds ten matches, or every vector if there are fewer.
    async fn recall(&self, data: &[Vec<f32>], queries: &[Vec<f32>]) -> anyhow::Result<[f64; 2]> {
        let mut hits = [0usize; 2];
        for q in queries {
            let truth: std::collections::HashSet<String> =
                brute_force(data, q, TOP_K).into_iter().map(|i| i.to_string()).collect();
            for (encoding, hits) in Encoding::ALL.into_iter().zip(&mut hits) {
                let body: Value = self
                    .http
                    .post(&self.url)
                    .header("x-api-key", &self.key)
                    .json(&search_body(q, encoding))
                    .send()
                    .await?
                    .json()
                    .await?;
                *hits += body["matches"].as_array().map_or(0, |m| {
                    m.iter()
                        .filter(|m| truth.contains(m["id"].as_str().unwrap_or("")))
                        .count()
                });
            }
        }
        let expected = TOP_K.min(data.len()) * queries.len();
        Ok(hits.map(|hits| hits as f64 / expected as f64))
    }

    /// One client searching, one query after another, until stopped: to time searches
    /// beside something else.
    fn one_at_a_time(&self, queries: &[Vec<f32>]) -> Meanwhile {
        let going = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (http, url, key, still) = (
            self.http.clone(),
            self.url.clone(),
            self.key.clone(),
            Arc::clone(&going),
        );
        let bodies: Vec<Value> = queries.iter().map(|q| search_body(q, Encoding::Numbers)).collect();
        let task = tokio::spawn(async move {
            let mut latencies = Vec::new();
            for body in bodies.iter().cycle() {
                if !still.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let started = Instant::now();
                let response = http.post(&url).header("x-api-key", &key).json(body).send().await?;
                anyhow::ensure!(response.status() == 200, "search answered {}", response.status());
                response.bytes().await?;
                latencies.push(started.elapsed().as_secs_f64() * 1000.0);
            }
            anyhow::Ok(latencies)
        });
        Meanwhile { going, task }
    }
}

/// A client searching beside something else ([`Searcher::one_at_a_time`]).
struct Meanwhile {
    going: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<anyhow::Result<Vec<f64>>>,
}

impl Meanwhile {
    /// Stops the client: its latencies in ms, sorted.
    async fn stop(self) -> anyhow::Result<Vec<f64>> {
        self.going.store(false, std::sync::atomic::Ordering::SeqCst);
        let mut latencies = self.task.await??;
        latencies.sort_by(f64::total_cmp);
        Ok(latencies)
    }
}

/// How a namespace's graph searches as it stands.
struct GraphMeasure {
    churn: usize,
    ef: usize,
    /// Recall@10 over HTTP with JSON numbers.
    recall: f64,
    raw_threads: usize,
    /// CPU per raw in-process search, from a thread per core for three seconds.
    raw_us: f64,
}

impl GraphMeasure {
    async fn take(
        indexes: &quiver_engine::IndexManager,
        project: &quiver_store::Project,
        searches: &Searcher,
        data: &[Vec<f32>],
        checked: &[Vec<f32>],
        queries: &[Vec<f32>],
    ) -> anyhow::Result<Self> {
        let status = indexes
            .status(project.id, "bench")
            .await
            .ok_or_else(|| anyhow::anyhow!("the served index is gone"))?;
        let [recall, _] = searches.recall(data, checked).await?;
        let raw = indexes
            .open(project, "bench")
            .await?
            .ok_or_else(|| anyhow::anyhow!("the served index is gone"))?;
        let raw_threads = std::thread::available_parallelism().map_or(1, usize::from);
        let queries = Arc::new(queries.to_vec());
        let (done, cpu) =
            tokio::task::block_in_place(|| raw_round(&raw, &queries, raw_threads, Duration::from_secs(3)));
        Ok(Self {
            churn: status.churn,
            ef: status.ef,
            recall,
            raw_threads,
            raw_us: cpu / done.max(1) as f64 * 1e6,
        })
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cpus = quiver_bench::allowed_cpus()?;
    anyhow::ensure!(
        !args.split_cores || cpus.len() >= 2,
        "--split-cores needs two cores, this process may use {}",
        cpus.len()
    );
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if args.split_cores {
        // The server gets one core for its searches: one runtime thread.
        runtime.worker_threads(1);
    }
    runtime.enable_all().build()?.block_on(run(args, cpus))
}

/// The benchmark; `cpus` are the CPUs this process may use.
async fn run(args: Args, cpus: Vec<usize>) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // Logs as a pod logs (`--log-format json`: a line per request), into a file here.
    let log_path = args.log.clone().unwrap_or_else(|| dir.path().join("quiver.log"));
    let log = std::fs::File::create(&log_path)?;
    let _log = quiver_common::telemetry::init_with(quiver_common::telemetry::LogFormat::Json, log, false);
    // The benchmark measures the vector path, not the plan: its budget never refuses.
    let quiver_bench::Served {
        store,
        indexes,
        server,
        project,
        key,
    } = quiver_bench::serve(dir.path(), Arc::new(Unmetered), 8 << 30, args.dim).await?;
    let base = format!("http://{server}");

    eprintln!("generating {} × {}-d vectors…", args.vectors, args.dim);
    let data = Arc::new(clustered_unit_vectors(args.vectors, args.dim, 1000, 1));
    let queries: Vec<Vec<f32>> = clustered_unit_vectors(args.recall_queries.max(1000), args.dim, 1000, 2);
    let http = reqwest::Client::new();

    // Upsert into a namespace no pod has loaded: the records store's write rate.
    eprintln!("upserting…");
    let writer = Upserter {
        http: http.clone(),
        base: base.clone(),
        key: key.clone(),
        batch: args.batch,
    };
    let bodies = tokio::task::block_in_place(|| writer.bodies(&data, 0));
    let upsert_secs = writer.upsert(bodies).await?;

    // First search loads the index from the store (cold load by replay).
    let started = Instant::now();
    http.post(format!("{base}/v1/vectors/search"))
        .header("x-api-key", &key)
        .json(&search_body(&queries[0], Encoding::Numbers))
        .send()
        .await?;
    let load_secs = started.elapsed().as_secs_f64();

    // Loading triggers a background tuning of the search width: measure after it.
    wait_for_tuning(&indexes, project.id).await;

    if let Some(ef) = args.ef {
        let served = indexes
            .open(&project, "bench")
            .await?
            .ok_or_else(|| anyhow::anyhow!("the served index is gone"))?;
        eprintln!("searching at ef {ef} (tuned: {})", served.index.ef());
        served.index.set_ef(ef);
    }

    let expected = TOP_K.min(args.vectors);
    let searches = Searcher {
        http: http.clone(),
        url: format!("{base}/v1/vectors/search"),
        key: key.clone(),
    };
    let recall = searches.recall(&data, &queries[..args.recall_queries]).await?;

    let (weighed, used) = (indexes.memory_bytes(), indexes.used_bytes());
    let ef = indexes.status(project.id, "bench").await.map_or(0, |status| status.ef);

    // Snapshot the served index, then load it on a fresh manager (a new pod) from it.
    eprintln!("snapshotting and loading from the snapshot…");
    let started = Instant::now();
    let snapshot_seq = indexes.snapshot_now(project.id, "bench").await?;
    let snapshot_secs = started.elapsed().as_secs_f64();
    let stored = store
        .snapshot(project.id, "bench")
        .await?
        .ok_or_else(|| anyhow::anyhow!("no snapshot stored"))?;
    let snapshot_bytes = stored.bytes.len();
    drop(stored);
    // What the index holds in memory, as against what usearch has reserved: loading
    // it on a fresh manager grows this process by the pages it touches (usearch maps
    // its arenas and the kernel backs a page once it is written).
    let resident_before = quiver_bench::resident_bytes();
    let fresh = quiver_engine::IndexManager::new(Arc::clone(&store), 8 << 30);
    let started = Instant::now();
    let probe = quiver_engine::Query {
        vector: queries[0].clone(),
        k: 10,
        filter: Arc::new(quiver_engine::Filter::All),
        include_values: false,
        strong: false,
    };
    fresh.search(&project, "bench", probe).await?;
    let snapshot_load_secs = started.elapsed().as_secs_f64();
    let resident = quiver_bench::resident_bytes() - resident_before;
    let from = fresh.status(project.id, "bench").await.map(|status| status.from);
    anyhow::ensure!(
        snapshot_seq.is_some() && matches!(from, Some(quiver_engine::LoadedFrom::Snapshot(_))),
        "the fresh manager did not load from the snapshot ({from:?})"
    );
    drop(fresh);

    // Raw usearch in-process: the very index object the server searches (the same
    // graph, memory layout and search width), from the same number of threads.
    let raw = indexes
        .open(&project, "bench")
        .await?
        .ok_or_else(|| anyhow::anyhow!("the served index is gone"))?;

    // Search load: HTTP with each encoding and raw in alternating rounds, so that drift
    // in this machine's speed (it is shared) falls on all three alike. The rounds are
    // short and turn the order, so no way always follows the same other one.
    let rounds = args.rounds.max(1);
    eprintln!(
        "searching over HTTP (JSON numbers, base64) and raw, {} clients, {} s each in {rounds} rounds…",
        args.clients, args.seconds
    );
    let requests = Encoding::ALL.map(|encoding| {
        let requests: Vec<Bytes> = queries
            .iter()
            .map(|q| {
                Bytes::from(quiver_bench::search_request(
                    server,
                    &key,
                    &search_body(q, encoding).to_string(),
                ))
            })
            .collect();
        Arc::new(requests)
    });
    let queries = Arc::new(queries);
    let round = Duration::from_secs(args.seconds) / rounds;
    let mut loads = [HttpLoad::default(), HttpLoad::default()];
    // With --split-cores, the server's threads (and raw's, which start from this one)
    // keep to the first core, the load client to the second.
    let client_cpu = if args.split_cores {
        quiver_bench::pin_process(&cpus[..1])?;
        Some(cpus[1])
    } else {
        None
    };
    // Raw from as many threads as there are clients, and from one per core (fewer
    // threads switch less): the better of the two is what HTTP is held to.
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let mut thread_counts = vec![args.clients];
    if cores != args.clients {
        thread_counts.push(cores);
    }
    let mut raws: Vec<RawLoad> = thread_counts
        .into_iter()
        .map(|threads| RawLoad {
            threads,
            done: 0,
            cpu: 0.0,
        })
        .collect();
    let ways: Vec<Way> = Encoding::ALL
        .into_iter()
        .map(Way::Http)
        .chain((0..raws.len()).map(Way::Raw))
        .collect();
    let machine_before = MachineTicks::now();
    for r in 0..rounds as usize {
        let mut http_qps = [0.0; 2];
        let mut best_raw_qps = 0f64;
        for w in 0..ways.len() {
            match ways[(w + r) % ways.len()] {
                Way::Http(encoding) => {
                    let e = encoding as usize;
                    let (times, client, process) = http_round(
                        server,
                        &requests[e],
                        args.clients,
                        round,
                        args.client_policy,
                        client_cpu,
                        expected,
                    )?;
                    http_qps[e] = times.len() as f64 / round.as_secs_f64();
                    let load = &mut loads[e];
                    load.latencies.extend(times);
                    load.client_cpu += client;
                    load.process_cpu += process;
                }
                Way::Raw(i) => {
                    let (done, cpu) = raw_round(&raw, &queries, raws[i].threads, round);
                    best_raw_qps = best_raw_qps.max(done as f64 / round.as_secs_f64());
                    raws[i].done += done;
                    raws[i].cpu += cpu;
                }
            }
        }
        for (load, qps) in loads.iter_mut().zip(http_qps) {
            load.ratios.push(qps / best_raw_qps);
        }
    }
    let stolen = MachineTicks::now().steal_since(machine_before);
    drop(raw);
    if args.split_cores {
        quiver_bench::pin_process(&cpus)?;
    }

    // Upsert into the namespace now that it is loaded and being served: each write is
    // added to the graph before it is answered, so this is the rate of the index.
    eprintln!(
        "upserting {} more vectors into the loaded namespace…",
        args.live_upserts
    );
    // Meanwhile one client searches, one query after another, to time searches that
    // meet writes.
    let more = Arc::new(clustered_unit_vectors(args.live_upserts, args.dim, 1000, 3));
    let first_id = if args.live_replace { 0 } else { args.vectors };
    let bodies = tokio::task::block_in_place(|| writer.bodies(&more, first_id));
    let meanwhile = searches.one_at_a_time(&queries);
    let live_secs = if args.live_upserts > 0 {
        writer.upsert(bodies).await?
    } else {
        f64::NAN
    };
    let beside_writes = meanwhile.stop().await?;

    // Rebuild the graph the replacements wore, with one client searching meanwhile.
    let rebuilt = if args.rebuild {
        let now: Vec<Vec<f32>> = more
            .iter()
            .chain(&data[more.len().min(data.len())..])
            .cloned()
            .collect();
        let checked = &queries[..args.recall_queries];
        wait_for_tuning(&indexes, project.id).await;
        eprintln!("measuring the worn graph…");
        let worn = GraphMeasure::take(&indexes, &project, &searches, &now, checked, &queries).await?;
        eprintln!("rebuilding the graph aside…");
        let meanwhile = searches.one_at_a_time(&queries);
        let started = Instant::now();
        anyhow::ensure!(
            indexes.rebuild_now(project.id, "bench").await?,
            "the rebuild did not run"
        );
        let secs = started.elapsed().as_secs_f64();
        let latencies = meanwhile.stop().await?;
        wait_for_tuning(&indexes, project.id).await;
        eprintln!("measuring the rebuilt graph…");
        let fresh = GraphMeasure::take(&indexes, &project, &searches, &now, checked, &queries).await?;
        Some((worn, secs, latencies, fresh))
    } else {
        None
    };
    for load in &mut loads {
        load.latencies.sort_by(f64::total_cmp);
        load.ratios.sort_by(f64::total_cmp);
    }
    let raw_qps = raws.iter().map(|raw| raw.qps(args.seconds)).fold(0f64, f64::max);

    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| data | {} × {}-d clustered unit vectors, cosine |",
        args.vectors, args.dim
    );
    if args.split_cores {
        println!(
            "| cores while searching | server (1 runtime thread) and raw usearch on CPU {}, load client on CPU {} |",
            cpus[0], cpus[1]
        );
    }
    println!(
        "| upsert over HTTP, namespace not loaded yet (batches of {}, 2 in flight) | {:.0} vectors/s |",
        args.batch,
        args.vectors as f64 / upsert_secs
    );
    println!(
        "| upsert over HTTP into the loaded namespace (graph insertion included; {} vectors{}) | {:.0} vectors/s |",
        args.live_upserts,
        if args.live_replace {
            ", each replacing a record's"
        } else {
            ""
        },
        args.live_upserts as f64 / live_secs
    );
    if !beside_writes.is_empty() {
        println!(
            "| search over HTTP meanwhile (1 client, one at a time; {} searches) | p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms |",
            beside_writes.len(),
            percentile(&beside_writes, 50.0),
            percentile(&beside_writes, 99.0),
            beside_writes.last().copied().unwrap_or_default()
        );
    }
    if let Some((worn, secs, latencies, fresh)) = &rebuilt {
        for (name, graph) in [("worn by the replacements", worn), ("rebuilt", fresh)] {
            println!(
                "| graph {name} (churn {}): search width, recall@10 over HTTP, raw search ({} threads) | ef {}, recall {:.3}, {:.0} µs CPU per search |",
                graph.churn, graph.raw_threads, graph.ef, graph.recall, graph.raw_us
            );
        }
        println!(
            "| rebuild aside (from one core), searches meanwhile (1 client, one at a time; {} searches) | {secs:.1} s; p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms |",
            latencies.len(),
            percentile(latencies, 50.0),
            percentile(latencies, 99.0),
            latencies.last().copied().unwrap_or_default()
        );
    }
    println!("| cold index load (replay from SQLite) | {:.1} s |", load_secs);
    println!(
        "| snapshot (serialize and store in SQLite) | {:.1} s, {:.0} MB |",
        snapshot_secs,
        snapshot_bytes as f64 / 1e6
    );
    println!("| cold index load from the snapshot | {:.1} s |", snapshot_load_secs);
    println!(
        "| recall@10 over HTTP ({} queries) | {:.3} (JSON numbers), {:.3} (base64) |",
        args.recall_queries, recall[0], recall[1]
    );
    for raw in &raws {
        println!(
            "| raw usearch in-process, {} thread{}, the served index (ef {ef}) | {:.0} QPS, {:.0} µs CPU per search |",
            raw.threads,
            if raw.threads == 1 { "" } else { "s" },
            raw.qps(args.seconds),
            raw.cpu / raw.done as f64 * 1e6
        );
    }
    for (encoding, load) in Encoding::ALL.into_iter().zip(&loads) {
        let requests = load.latencies.len() as f64;
        let qps = requests / args.seconds as f64;
        let server_cpu = (load.process_cpu - load.client_cpu) / requests;
        println!(
            "| search over HTTP, {} clients, query as {} | {:.0} QPS, p50 {:.2} ms, p99 {:.2} ms |",
            args.clients,
            encoding.name(),
            qps,
            percentile(&load.latencies, 50.0),
            percentile(&load.latencies, 99.0)
        );
        println!(
            "| HTTP / raw (the better raw), query as {} | **{:.0} %** (rounds: median {:.0} %, {:.0}–{:.0} %; CPU per request: server {:.0} µs, load client {:.0} µs) |",
            encoding.name(),
            100.0 * qps / raw_qps,
            100.0 * percentile(&load.ratios, 50.0),
            100.0 * percentile(&load.ratios, 0.0),
            100.0 * percentile(&load.ratios, 100.0),
            server_cpu * 1e6,
            load.client_cpu / requests * 1e6
        );
    }
    println!(
        "| CPU time stolen by the hypervisor while searching | {:.1} % |",
        100.0 * stolen
    );
    println!(
        "| index memory | {:.0} bytes/vector in use, {:.0} weighed by the memory budget; {:.0} resident (the process's growth as a fresh manager loads it from the snapshot) |",
        used as f64 / args.vectors as f64,
        weighed as f64 / args.vectors as f64,
        resident / args.vectors as f64
    );
    Ok(())
}
