-- Quiver's catalog, records and idempotency records on SQLite (standalone mode).
-- Ids are UUIDs stored as 16-byte blobs; timestamps are RFC 3339 text; metadata is JSON text.

CREATE TABLE plans (
    id                   TEXT PRIMARY KEY,
    name                 TEXT NOT NULL,
    queries_per_minute   INTEGER NOT NULL CHECK (queries_per_minute > 0),
    documents_per_minute INTEGER NOT NULL CHECK (documents_per_minute > 0),
    max_vectors          INTEGER NOT NULL CHECK (max_vectors > 0),
    max_namespaces       INTEGER NOT NULL CHECK (max_namespaces > 0),
    max_batch_size       INTEGER NOT NULL CHECK (max_batch_size > 0),
    sort_order           INTEGER NOT NULL
);

INSERT INTO plans VALUES
    ('starter',       'Starter',          30,    100,     100000,    10, 1000, 1),
    ('developer',     'Developer',       300,   1000,    1000000,   100, 1000, 2),
    ('business',      'Business',       3000,  10000,   10000000,  1000, 1000, 3),
    ('business_plus', 'Business Plus', 10000,  50000,   50000000, 10000, 1000, 4);

CREATE TABLE users (
    id            BLOB PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at    TEXT NOT NULL
);

CREATE TABLE projects (
    id         BLOB PRIMARY KEY,
    owner_id   BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name       TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    dimension  INTEGER NOT NULL CHECK (dimension BETWEEN 1 AND 4096),
    metric     TEXT NOT NULL CHECK (metric IN ('cosine', 'euclidean', 'dotproduct')),
    plan_id    TEXT NOT NULL REFERENCES plans (id),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX projects_by_owner ON projects (owner_id, created_at);

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    project_id   BLOB NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    label        TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('app_readonly', 'app_readwrite', 'admin')),
    secret_hash  TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    expires_at   TEXT,
    last_used_at TEXT,
    revoked_at   TEXT
);
CREATE INDEX api_keys_by_project ON api_keys (project_id, created_at);
CREATE INDEX api_keys_by_revocation ON api_keys (revoked_at) WHERE revoked_at IS NOT NULL;

-- One row per namespace: its write sequence, its live record count and its epoch (new each time it is created).
CREATE TABLE namespaces (
    project_id BLOB NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    epoch      BLOB NOT NULL,
    seq        INTEGER NOT NULL,
    live_count INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (project_id, name)
);

-- Records; a delete leaves a tombstone (deleted = 1, empty vector) so indexes can replay it.
CREATE TABLE records (
    project_id BLOB NOT NULL,
    namespace  TEXT NOT NULL,
    id         TEXT NOT NULL,
    vector     BLOB NOT NULL,
    metadata   TEXT NOT NULL,
    content    TEXT,
    seq        INTEGER NOT NULL,
    deleted    INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (project_id, namespace, id),
    FOREIGN KEY (project_id, namespace) REFERENCES namespaces (project_id, name) ON DELETE CASCADE
) WITHOUT ROWID;
CREATE INDEX records_by_seq ON records (project_id, namespace, seq);

CREATE TABLE idempotency_keys (
    project_id      BLOB NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    key             TEXT NOT NULL,
    request_hash    TEXT NOT NULL,
    response_status INTEGER,
    response_body   BLOB,
    locked_until_ms INTEGER NOT NULL,
    expires_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (project_id, key)
);
CREATE INDEX idempotency_keys_by_expiry ON idempotency_keys (expires_at_ms);
