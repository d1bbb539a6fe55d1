//! What the crash writer writes, so the test can check it independently.

use quiver_store::{Metadata, RecordWrite};

/// The namespace the crash writer fills.
pub const NAMESPACE: &str = "crash";
/// Records per batch.
pub const BATCH: usize = 50;

/// The records of batch number `n`, all derived from `n` so a reader can recompute them.
pub fn batch(n: u64) -> Vec<RecordWrite> {
    (0..BATCH)
        .map(|i| {
            let mut metadata = Metadata::new();
            metadata.insert("batch".into(), n.into());
            RecordWrite {
                id: format!("b{n}-{i}"),
                vector: (0..8).map(|d| (n as f32) + (i as f32) / 100.0 + d as f32).collect(),
                metadata,
                content: Some(format!("batch {n} record {i}")),
            }
        })
        .collect()
}
