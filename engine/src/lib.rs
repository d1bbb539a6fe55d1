//! Quiver's index engine: per-namespace HNSW indexes on usearch, metadata filters,
//! and the manager that loads indexes from the records store and keeps them current.
//! Nothing here knows about HTTP.

/// The filter language of the vector API.
pub mod filter;
/// One namespace's in-memory index.
pub mod index;
/// Loading, updating, snapshotting and evicting a pod's indexes.
pub mod manager;
/// The snapshot format of an index.
pub mod snapshot;

pub use filter::{Filter, FilterError};
pub use index::{Match, NamespaceIndex, Plan, SearchOutcome};
pub use manager::{EngineError, IndexManager, IndexStatus, LoadedFrom, Query, SnapshotPolicy};
