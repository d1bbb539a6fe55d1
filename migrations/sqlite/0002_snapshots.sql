-- Index snapshots: a namespace's serialized index at a seq, in chunks, so a pod loads
-- it and replays only the records written after. One snapshot per namespace; a newer
-- one replaces it. Tombstones at or below `horizon` were purged when a snapshot
-- covered them: an index behind the horizon reloads from the snapshot.
ALTER TABLE namespaces ADD COLUMN horizon INTEGER NOT NULL DEFAULT 0;

CREATE TABLE snapshots (
    project_id BLOB NOT NULL,
    namespace  TEXT NOT NULL,
    -- Chunks are uploaded under a new id first, then this row is switched to it.
    id         BLOB NOT NULL,
    epoch      BLOB NOT NULL,
    seq        INTEGER NOT NULL,
    size       INTEGER NOT NULL,
    chunks     INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (project_id, namespace),
    FOREIGN KEY (project_id, namespace) REFERENCES namespaces (project_id, name) ON DELETE CASCADE
);

CREATE TABLE snapshot_chunks (
    snapshot_id BLOB NOT NULL,
    chunk       INTEGER NOT NULL,
    project_id  BLOB NOT NULL,
    namespace   TEXT NOT NULL,
    bytes       BLOB NOT NULL,
    PRIMARY KEY (snapshot_id, chunk),
    FOREIGN KEY (project_id, namespace) REFERENCES namespaces (project_id, name) ON DELETE CASCADE
) WITHOUT ROWID;
CREATE INDEX snapshot_chunks_by_namespace ON snapshot_chunks (project_id, namespace);
