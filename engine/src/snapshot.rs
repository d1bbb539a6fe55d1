//! The snapshot format of one namespace's index: everything [`NamespaceIndex`] holds
//! (usearch's own serialization of graph and vectors, then the slot table), behind a
//! header that says what it is and a CRC-32 of the rest.
//!
//! ```text
//! magic "QVSNAP02" | crc32 (of all that follows) | dimension u32 | metric u8 |
//! ef u32 | churn u64 | seq i64 | epoch [16] | graph length u64 | graph |
//! slot count u64 | per slot: 0 (free) or 1, id length u32, id, metadata length u32, metadata JSON
//! ```
//! Integers are little-endian. The first format, "QVSNAP01", has no churn (read as 0).
//!
//! [`NamespaceIndex`]: crate::NamespaceIndex

use quiver_common::domain::Metric;
use quiver_store::Metadata;

const MAGIC: &[u8; 8] = b"QVSNAP02";
/// The first format: as now, without the churn.
const MAGIC_01: &[u8; 8] = b"QVSNAP01";

/// Why snapshot bytes cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a Quiver index snapshot, or of another format version")]
    Format,
    #[error("the snapshot is corrupt: {0}")]
    Corrupt(&'static str),
    #[error("the snapshot is of a {found} index, this namespace is {expected}")]
    Mismatch { found: String, expected: String },
}

/// What a snapshot says of its index before the graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub dimension: u32,
    pub metric: Metric,
    /// The search width served.
    pub ef: u32,
    /// Vectors removed from the graph since it was built (see `NamespaceIndex::churn`).
    pub churn: u64,
    pub seq: i64,
    pub epoch: uuid::Uuid,
}

/// What an index is made of, as read from snapshot bytes (borrowing from them).
#[derive(Debug)]
pub struct Parts<'a> {
    pub header: Header,
    pub graph: &'a [u8],
    pub slots: Vec<Option<(&'a str, Metadata)>>,
}

fn metric_code(metric: Metric) -> u8 {
    match metric {
        Metric::Cosine => 0,
        Metric::Euclidean => 1,
        Metric::DotProduct => 2,
    }
}

fn metric_from(code: u8) -> Option<Metric> {
    match code {
        0 => Some(Metric::Cosine),
        1 => Some(Metric::Euclidean),
        2 => Some(Metric::DotProduct),
        _ => None,
    }
}

/// Writes the header and leaves room for the graph, which usearch serializes in place:
/// returns the buffer and where the graph goes. `slots_len` is a guess at the slot
/// table's size, so that the buffer need not grow (and double) after.
pub fn begin(header: &Header, graph_len: usize, slots_len: usize) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(72 + graph_len + slots_len);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[0; 4]); // CRC, filled in by `finish`
    out.extend_from_slice(&header.dimension.to_le_bytes());
    out.push(metric_code(header.metric));
    out.extend_from_slice(&header.ef.to_le_bytes());
    out.extend_from_slice(&header.churn.to_le_bytes());
    out.extend_from_slice(&header.seq.to_le_bytes());
    out.extend_from_slice(header.epoch.as_bytes());
    out.extend_from_slice(&(graph_len as u64).to_le_bytes());
    let at = out.len();
    out.resize(at + graph_len, 0);
    (out, at)
}

/// Appends the slot table and seals the buffer with its checksum.
pub fn finish<'s>(mut out: Vec<u8>, slots: impl ExactSizeIterator<Item = Option<(&'s str, &'s Metadata)>>) -> Vec<u8> {
    out.extend_from_slice(&(slots.len() as u64).to_le_bytes());
    for slot in slots {
        match slot {
            None => out.push(0),
            Some((id, metadata)) => {
                out.push(1);
                out.extend_from_slice(&(id.len() as u32).to_le_bytes());
                out.extend_from_slice(id.as_bytes());
                let at = out.len();
                out.extend_from_slice(&[0; 4]);
                serde_json::to_writer(&mut out, metadata).expect("metadata serializes to a Vec");
                let len = (out.len() - at - 4) as u32;
                out[at..at + 4].copy_from_slice(&len.to_le_bytes());
            }
        }
    }
    let crc = crc32fast::hash(&out[12..]);
    out[8..12].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Reads snapshot bytes, checking the checksum and that they are of an index with this
/// dimension and metric.
pub fn decode(bytes: &[u8], dimension: u32, metric: Metric) -> Result<Parts<'_>, SnapshotError> {
    let first_format = match bytes.get(..8) {
        Some(magic) if magic == MAGIC => false,
        Some(magic) if magic == MAGIC_01 => true,
        _ => return Err(SnapshotError::Format),
    };
    if bytes.len() < 12 {
        return Err(SnapshotError::Format);
    }
    let crc = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if crc32fast::hash(&bytes[12..]) != crc {
        return Err(SnapshotError::Corrupt("checksum mismatch"));
    }
    let mut reader = Reader { bytes, at: 12 };
    let found_dimension = reader.u32()?;
    let found_metric = metric_from(reader.u8()?).ok_or(SnapshotError::Corrupt("unknown metric"))?;
    if found_dimension != dimension || found_metric != metric {
        return Err(SnapshotError::Mismatch {
            found: format!("{found_dimension}-d {found_metric}"),
            expected: format!("{dimension}-d {metric}"),
        });
    }
    let ef = reader.u32()?;
    let churn = if first_format { 0 } else { reader.u64()? };
    let seq = i64::from_le_bytes(reader.take(8)?.try_into().expect("8 bytes"));
    let epoch = uuid::Uuid::from_slice(reader.take(16)?).map_err(|_| SnapshotError::Corrupt("epoch"))?;
    let graph_len = reader.len()?;
    let graph = reader.take(graph_len)?;
    let count = reader.len()?;
    // Every slot takes at least a byte: a count beyond what is left is corrupt, and
    // checking first keeps hostile bytes from asking for a huge allocation.
    if count > bytes.len() - reader.at {
        return Err(SnapshotError::Corrupt("slot count"));
    }
    let mut slots = Vec::with_capacity(count);
    for _ in 0..count {
        match reader.u8()? {
            0 => slots.push(None),
            1 => {
                let id_len = reader.u32()? as usize;
                let id = std::str::from_utf8(reader.take(id_len)?).map_err(|_| SnapshotError::Corrupt("id"))?;
                let meta_len = reader.u32()? as usize;
                let metadata: Metadata =
                    serde_json::from_slice(reader.take(meta_len)?).map_err(|_| SnapshotError::Corrupt("metadata"))?;
                slots.push(Some((id, metadata)));
            }
            _ => return Err(SnapshotError::Corrupt("slot tag")),
        }
    }
    if reader.at != bytes.len() {
        return Err(SnapshotError::Corrupt("trailing bytes"));
    }
    Ok(Parts {
        header: Header {
            dimension,
            metric,
            ef,
            churn,
            seq,
            epoch,
        },
        graph,
        slots,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        let end = self.at.checked_add(n).filter(|&end| end <= self.bytes.len());
        let end = end.ok_or(SnapshotError::Corrupt("truncated"))?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn len(&mut self) -> Result<usize, SnapshotError> {
        usize::try_from(self.u64()?).map_err(|_| SnapshotError::Corrupt("length"))
    }
}
