//! Shared pieces of Quiver's load tools: synthetic embedding-like data and latency stats.

use rand::{Rng as _, SeedableRng as _};

/// `n` unit vectors of `dim` dimensions around `clusters` random centres, the way
/// sentence embeddings bunch around topics. The centres are the same for every seed,
/// so data and queries drawn with different seeds share one distribution.
pub fn clustered_unit_vectors(n: usize, dim: usize, clusters: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut centre_rng = rand::rngs::StdRng::seed_from_u64(0x00C0_FFEE);
    let centres: Vec<Vec<f32>> = (0..clusters)
        .map(|_| normalized(gaussian(&mut centre_rng, dim, 1.0)))
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let centre = &centres[rng.random_range(0..clusters)];
            // Noise of norm about 1: a point's cosine to its centre is about 0.7.
            let noise = gaussian(&mut rng, dim, 1.0 / (dim as f32).sqrt());
            normalized(centre.iter().zip(noise).map(|(c, e)| c + e).collect())
        })
        .collect()
}

fn gaussian(rng: &mut rand::rngs::StdRng, dim: usize, sigma: f32) -> Vec<f32> {
    (0..dim)
        .map(|_| {
            // Box–Muller.
            let (u1, u2): (f32, f32) = (rng.random_range(f32::EPSILON..1.0), rng.random());
            sigma * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        })
        .collect()
}

fn normalized(v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
    v.into_iter().map(|x| x / norm).collect()
}

/// The ids of the `k` vectors most cosine-similar to `query` (unit vectors: dot product).
pub fn brute_force(data: &[Vec<f32>], query: &[f32], k: usize) -> Vec<usize> {
    let mut scored: Vec<(f32, usize)> = data
        .iter()
        .enumerate()
        .map(|(i, v)| (v.iter().zip(query).map(|(a, b)| a * b).sum(), i))
        .collect();
    if k < scored.len() {
        scored.select_nth_unstable_by(k, |a, b| b.0.total_cmp(&a.0));
        scored.truncate(k);
    }
    scored.into_iter().map(|(_, i)| i).collect()
}

/// Percentile (0–100) of sorted samples, in the samples' unit.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// CPU seconds (user + system) this process has used, or the calling thread when
/// `thread` (from `/proc`, in clock ticks of 10 ms; Linux only).
pub fn cpu_seconds(thread: bool) -> f64 {
    let path = if thread {
        "/proc/thread-self/stat"
    } else {
        "/proc/self/stat"
    };
    let Ok(stat) = std::fs::read_to_string(path) else {
        return f64::NAN;
    };
    // Fields after the command name (which may hold spaces): state is the first,
    // utime the 12th and stime the 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (ticks(11) + ticks(12)) / 100.0
}

/// Bytes of this process resident in memory (`/proc/self/statm`; Linux only), or NaN.
pub fn resident_bytes() -> f64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return f64::NAN;
    };
    let pages = statm
        .split_whitespace()
        .nth(1)
        .and_then(|pages| pages.parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    // SAFETY: sysconf reads a constant of the system; it has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page as f64
}

/// The CPUs the calling thread may run on (Linux).
pub fn allowed_cpus() -> std::io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is a plain bit array, valid when zeroed.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable cpu_set_t of the size passed.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: CPU_ISSET only reads bit `cpu` of `set`.
    Ok((0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Lets the calling thread run on `cpus` only (Linux). Threads it starts afterwards
/// inherit that.
pub fn pin_thread(cpus: &[usize]) -> std::io::Result<()> {
    pin(0, cpus)
}

/// Lets every thread of this process run on `cpus` only (Linux): those running now,
/// from `/proc/self/task`, and (by inheritance) those they start afterwards. A thread
/// that ends meanwhile is skipped.
pub fn pin_process(cpus: &[usize]) -> std::io::Result<()> {
    for task in std::fs::read_dir("/proc/self/task")? {
        let name = task?.file_name();
        let Some(tid) = name.to_str().and_then(|tid| tid.parse::<libc::pid_t>().ok()) else {
            continue;
        };
        match pin(tid, cpus) {
            Err(err) if err.raw_os_error() == Some(libc::ESRCH) => {}
            other => other?,
        }
    }
    Ok(())
}

fn pin(tid: libc::pid_t, cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is a plain bit array, valid when zeroed.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: CPU_SET only sets bit `cpu` of `set` (ignoring CPUs beyond its size).
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t of the size passed, read only during the
    // call; the call changes nothing but the thread's CPU affinity.
    if unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// This machine's CPU time since boot as `/proc/stat` counts it, in clock ticks: all of
/// it, and the part the hypervisor gave to other guests while this one wanted to run
/// ("steal"). Linux only; zeros elsewhere.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MachineTicks {
    pub total: u64,
    pub steal: u64,
}

impl MachineTicks {
    pub fn now() -> Self {
        std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|stat| Self::parse(&stat))
            .unwrap_or_default()
    }

    /// The first (all-CPU) line of `/proc/stat`: `cpu user nice system idle iowait irq
    /// softirq steal guest guest_nice`. Guest time is already counted in user and nice.
    fn parse(stat: &str) -> Option<Self> {
        let line = stat.lines().find(|line| line.starts_with("cpu "))?;
        let ticks: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        Some(Self {
            total: ticks.iter().take(8).sum(),
            steal: ticks.get(7).copied().unwrap_or(0),
        })
    }

    /// The share of the machine's CPU time stolen between `earlier` and `self`.
    pub fn steal_since(self, earlier: Self) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return 0.0;
        }
        self.steal.saturating_sub(earlier.steal) as f64 / total as f64
    }
}

/// A data plane served in-process on loopback, as the binary serves it, with a project
/// to load and search.
pub struct Served {
    pub store: std::sync::Arc<dyn quiver_store::Store>,
    pub indexes: std::sync::Arc<quiver_engine::IndexManager>,
    pub server: std::net::SocketAddr,
    /// `dim`-d cosine vectors on Business Plus.
    pub project: quiver_store::Project,
    /// An admin key of the project.
    pub key: String,
}

/// Serves a data plane on SQLite in `dir`, the bus in memory, with `budget` for the
/// rate limits and `index_memory` bytes of indexes, and creates a project of `dim`-d
/// cosine vectors with an admin key. Served as the binary serves it (Nagle off, each
/// client's address for the key guard), but with no background snapshots: vector-load
/// stores one itself to time loading from it, and request-cost would count a
/// snapshot's writes in whichever phase they fell.
pub async fn serve(
    dir: &std::path::Path,
    budget: std::sync::Arc<dyn quiver_data_plane::limits::Budget>,
    index_memory: u64,
    dim: usize,
) -> anyhow::Result<Served> {
    use std::sync::Arc;
    let store = sqlite_store(dir).await?;
    let bus: Arc<dyn quiver_common::bus::Bus> = Arc::new(quiver_common::bus::InProcessBus::default());
    let jwt = quiver_common::token::JwtKeys::new(&[9u8; 32]).map_err(anyhow::Error::msg)?;
    let settings = quiver_data_plane::Settings {
        index_memory,
        snapshots: quiver_engine::SnapshotPolicy {
            interval: std::time::Duration::ZERO,
            ..quiver_engine::SnapshotPolicy::default()
        },
        embed: quiver_embed::EmbedConfig::default(),
        default_embedding_model: quiver_embed::DEFAULT_MODEL.into(),
        trusted_proxies: quiver_data_plane::client::TrustedProxies::default(),
        cors_origins: Default::default(),
    };
    let plane = quiver_data_plane::DataPlane::new(Arc::clone(&store), bus, budget, jwt, settings);
    let indexes = Arc::clone(&plane.indexes);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server = listener.local_addr()?;
    tokio::spawn(async move {
        axum::serve(
            quiver_common::http::without_nagle(listener),
            plane
                .router()
                .into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
    });

    let project = create_project(store.as_ref(), dim).await?;
    let request = quiver_control_plane::keys::CreateKey {
        label: "bench".into(),
        role: quiver_common::domain::Role::Admin,
        expires_at: None,
    };
    let key = quiver_control_plane::keys::mint(store.as_ref(), project.id, request)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.envelope().error.message))?
        .key;
    Ok(Served {
        store,
        indexes,
        server,
        project,
        key,
    })
}

/// A records store on SQLite in `dir`, migrated.
pub async fn sqlite_store(dir: &std::path::Path) -> anyhow::Result<std::sync::Arc<dyn quiver_store::Store>> {
    let store = quiver_store::connect(&quiver_store::sqlite::SqliteStore::url_for_data_dir(dir)).await?;
    store.migrate().await?;
    Ok(store)
}

/// A project of `dim`-d cosine vectors on Business Plus, owned by a user made for it.
pub async fn create_project(store: &dyn quiver_store::Store, dim: usize) -> anyhow::Result<quiver_store::Project> {
    let user = store.create_user("bench@example.com", "unused").await?;
    let project = store
        .create_project(quiver_store::NewProject {
            owner_id: user.id,
            name: "bench".into(),
            dimension: dim as u32,
            metric: quiver_common::domain::Metric::Cosine,
            plan_id: "business_plus".into(),
        })
        .await?;
    Ok(project)
}

/// Where a load client's response starts its body and how long the body is, once
/// `buffer` holds the whole head (`None` before): the head's length and its
/// `content-length`. A status other than 200, or no `content-length`, is an error that
/// quotes what came after the head.
pub fn response_head(buffer: &[u8]) -> anyhow::Result<Option<(usize, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head) = response.parse(buffer)? else {
        return Ok(None);
    };
    let status = response.code.unwrap_or_default();
    let length = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
        .ok_or_else(|| anyhow::anyhow!("a response without content-length"))?;
    anyhow::ensure!(
        status == 200,
        "search answered {status}: {}",
        String::from_utf8_lossy(&buffer[head..])
    );
    Ok(Some((head, length)))
}

/// A search request as the load clients write it: request line, headers and body.
pub fn search_request(server: std::net::SocketAddr, key: &str, body: &str) -> String {
    format!(
        "POST /v1/vectors/search HTTP/1.1\r\nhost: {server}\r\nx-api-key: {key}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_ticks_read_the_all_cpu_line_and_its_steal() {
        let stat = "cpu  7169 3232 4393 15072 615 0 205 349 0 0\ncpu0 3485 1576 1722 8480 59 0 38 147 0 0\n";
        let ticks = MachineTicks::parse(stat).expect("parses");
        assert_eq!(
            ticks,
            MachineTicks {
                total: 7169 + 3232 + 4393 + 15072 + 615 + 205 + 349,
                steal: 349
            }
        );
        let later = MachineTicks {
            total: ticks.total + 200,
            steal: ticks.steal + 50,
        };
        assert_eq!(later.steal_since(ticks), 0.25);
        assert_eq!(ticks.steal_since(ticks), 0.0);
    }
}
