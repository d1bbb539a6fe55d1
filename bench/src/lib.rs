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
