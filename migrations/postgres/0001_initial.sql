-- Quiver's catalog, records and idempotency records on Postgres (cluster mode).

CREATE TABLE plans (
    id                   TEXT PRIMARY KEY,
    name                 TEXT NOT NULL,
    queries_per_minute   INTEGER NOT NULL CHECK (queries_per_minute > 0),
    documents_per_minute INTEGER NOT NULL CHECK (documents_per_minute > 0),
    max_vectors          BIGINT NOT NULL CHECK (max_vectors > 0),
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
    id            UUID PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL
);

CREATE TABLE projects (
    id         UUID PRIMARY KEY,
    owner_id   UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name       TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    dimension  INTEGER NOT NULL CHECK (dimension BETWEEN 1 AND 4096),
    metric     TEXT NOT NULL CHECK (metric IN ('cosine', 'euclidean', 'dotproduct')),
    plan_id    TEXT NOT NULL REFERENCES plans (id),
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX projects_by_owner ON projects (owner_id, created_at);

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    project_id   UUID NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    label        TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('app_readonly', 'app_readwrite', 'admin')),
    secret_hash  TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ
);
CREATE INDEX api_keys_by_project ON api_keys (project_id, created_at);
CREATE INDEX api_keys_by_revocation ON api_keys (revoked_at) WHERE revoked_at IS NOT NULL;

-- One row per namespace: its write sequence, its live record count and its epoch (new each time it is created).
-- Writers take the row lock by bumping seq, so seq order is commit order.
CREATE TABLE namespaces (
    project_id UUID NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    epoch      UUID NOT NULL,
    seq        BIGINT NOT NULL,
    live_count BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (project_id, name)
);

-- Records; a delete leaves a tombstone (deleted, empty vector) so indexes can replay it.
CREATE TABLE records (
    project_id UUID NOT NULL,
    namespace  TEXT NOT NULL,
    -- byte order, as in SQLite, so id cursors behave the same on both backends
    id         TEXT COLLATE "C" NOT NULL,
    vector     BYTEA NOT NULL,
    metadata   JSONB NOT NULL,
    content    TEXT,
    seq        BIGINT NOT NULL,
    deleted    BOOLEAN NOT NULL DEFAULT FALSE,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (project_id, namespace, id),
    FOREIGN KEY (project_id, namespace) REFERENCES namespaces (project_id, name) ON DELETE CASCADE
);
CREATE INDEX records_by_seq ON records (project_id, namespace, seq);

CREATE TABLE idempotency_keys (
    project_id      UUID NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    key             TEXT NOT NULL,
    request_hash    TEXT NOT NULL,
    response_status INTEGER,
    response_body   BYTEA,
    locked_until_ms BIGINT NOT NULL,
    expires_at_ms   BIGINT NOT NULL,
    PRIMARY KEY (project_id, key)
);
CREATE INDEX idempotency_keys_by_expiry ON idempotency_keys (expires_at_ms);
