-- Prodgy API schema (PostgreSQL). Timestamps are Unix milliseconds; JSON is TEXT.
-- Only BIGINT/TEXT/REAL are used so one query layer serves SQLite and PostgreSQL.

CREATE TABLE integrations (
    id                 TEXT PRIMARY KEY,
    product            TEXT NOT NULL,
    name               TEXT NOT NULL,
    kind               TEXT NOT NULL,
    config             TEXT NOT NULL,
    credentials        TEXT,
    credentials_key_id TEXT,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL
);
CREATE INDEX integrations_product ON integrations (product, id);

CREATE TABLE agents (
    id             TEXT PRIMARY KEY,
    product        TEXT NOT NULL,
    name           TEXT NOT NULL,
    description    TEXT NOT NULL,
    kind           TEXT NOT NULL,
    config         TEXT NOT NULL,
    integration_id TEXT,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);
CREATE INDEX agents_product ON agents (product, id);
CREATE INDEX agents_integration ON agents (integration_id);

CREATE TABLE triggers (
    id           TEXT PRIMARY KEY,
    product      TEXT NOT NULL,
    agent_id     TEXT NOT NULL,
    name         TEXT NOT NULL,
    kind         TEXT NOT NULL,
    config       TEXT NOT NULL,
    input        TEXT NOT NULL,
    enabled      BIGINT NOT NULL,
    webhook_path TEXT,
    next_run_at  BIGINT,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX triggers_product ON triggers (product, id);
CREATE INDEX triggers_agent ON triggers (agent_id);
CREATE INDEX triggers_webhook ON triggers (product, webhook_path);
CREATE INDEX triggers_due ON triggers (next_run_at);

CREATE TABLE executions (
    id           TEXT PRIMARY KEY,
    product      TEXT NOT NULL,
    agent_id     TEXT NOT NULL,
    trigger_id   TEXT,
    status       TEXT NOT NULL,
    input        TEXT NOT NULL,
    output       TEXT,
    error        TEXT,
    attempts     BIGINT NOT NULL,
    max_attempts BIGINT NOT NULL,
    lease_owner  TEXT,
    lease_until  BIGINT,
    created_at   BIGINT NOT NULL,
    started_at   BIGINT,
    finished_at  BIGINT,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX executions_agent ON executions (product, agent_id, id);
CREATE INDEX executions_queue ON executions (status, created_at);

CREATE TABLE webhook_events (
    id            TEXT PRIMARY KEY,
    product       TEXT NOT NULL,
    path          TEXT NOT NULL,
    body          TEXT NOT NULL,
    execution_ids TEXT NOT NULL,
    received_at   BIGINT NOT NULL
);
CREATE INDEX webhook_events_product ON webhook_events (product, id);

CREATE TABLE files (
    id           TEXT PRIMARY KEY,
    product      TEXT NOT NULL,
    name         TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size         BIGINT NOT NULL,
    sha256       TEXT NOT NULL,
    blob_key     TEXT NOT NULL,
    document_id  TEXT,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    UNIQUE (product, name)
);
CREATE INDEX files_product ON files (product, id);

CREATE TABLE documents (
    seq           BIGSERIAL PRIMARY KEY,
    id            TEXT NOT NULL UNIQUE,
    product       TEXT NOT NULL,
    name          TEXT NOT NULL,
    source        TEXT NOT NULL,
    file_id       TEXT,
    content_type  TEXT NOT NULL,
    size          BIGINT NOT NULL,
    indexed_bytes BIGINT NOT NULL,
    truncated     BIGINT NOT NULL,
    content       TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);
CREATE INDEX documents_product ON documents (product, id);

CREATE TABLE conversations (
    id         TEXT PRIMARY KEY,
    product    TEXT NOT NULL,
    title      TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX conversations_product ON conversations (product, id);

CREATE TABLE messages (
    id              TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    product         TEXT NOT NULL,
    role            TEXT NOT NULL,
    content         TEXT NOT NULL,
    citations       TEXT NOT NULL,
    status          TEXT NOT NULL,
    created_at      BIGINT NOT NULL
);
CREATE INDEX messages_conversation ON messages (conversation_id, id);
-- Full-text index over documents: the name weighs more than the body.
ALTER TABLE documents ADD COLUMN tsv tsvector GENERATED ALWAYS AS (
    setweight(to_tsvector('english', name), 'A') || setweight(to_tsvector('english', content), 'B')
) STORED;
CREATE INDEX documents_tsv ON documents USING GIN (tsv);

-- The queue is claimed with FOR UPDATE SKIP LOCKED; this keeps the scan short.
CREATE INDEX executions_claimable ON executions (created_at) WHERE status IN ('queued', 'running');
