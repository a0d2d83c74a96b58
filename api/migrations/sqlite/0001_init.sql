-- Prodgy API schema (SQLite). Timestamps are Unix milliseconds; JSON is TEXT.
-- Only INTEGER/TEXT/REAL are used so one query layer serves SQLite and PostgreSQL.

CREATE TABLE integrations (
    id                 TEXT PRIMARY KEY,
    product            TEXT NOT NULL,
    name               TEXT NOT NULL,
    kind               TEXT NOT NULL,
    config             TEXT NOT NULL,
    credentials        TEXT,
    credentials_key_id TEXT,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL
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
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
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
    enabled      INTEGER NOT NULL,
    webhook_path TEXT,
    next_run_at  INTEGER,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
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
    attempts     INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    lease_owner  TEXT,
    lease_until  INTEGER,
    created_at   INTEGER NOT NULL,
    started_at   INTEGER,
    finished_at  INTEGER,
    updated_at   INTEGER NOT NULL
);
CREATE INDEX executions_agent ON executions (product, agent_id, id);
CREATE INDEX executions_queue ON executions (status, created_at);

CREATE TABLE webhook_events (
    id            TEXT PRIMARY KEY,
    product       TEXT NOT NULL,
    path          TEXT NOT NULL,
    body          TEXT NOT NULL,
    execution_ids TEXT NOT NULL,
    received_at   INTEGER NOT NULL
);
CREATE INDEX webhook_events_product ON webhook_events (product, id);

CREATE TABLE files (
    id           TEXT PRIMARY KEY,
    product      TEXT NOT NULL,
    name         TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size         INTEGER NOT NULL,
    sha256       TEXT NOT NULL,
    blob_key     TEXT NOT NULL,
    document_id  TEXT,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    UNIQUE (product, name)
);
CREATE INDEX files_product ON files (product, id);

CREATE TABLE documents (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    id            TEXT NOT NULL UNIQUE,
    product       TEXT NOT NULL,
    name          TEXT NOT NULL,
    source        TEXT NOT NULL,
    file_id       TEXT,
    content_type  TEXT NOT NULL,
    size          INTEGER NOT NULL,
    indexed_bytes INTEGER NOT NULL,
    truncated     INTEGER NOT NULL,
    content       TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
CREATE INDEX documents_product ON documents (product, id);

-- Full-text index over documents (external content: the text is stored once).
CREATE VIRTUAL TABLE documents_fts USING fts5 (
    name, content, content = 'documents', content_rowid = 'seq', tokenize = 'porter unicode61'
);
CREATE TRIGGER documents_ai AFTER INSERT ON documents BEGIN
    INSERT INTO documents_fts (rowid, name, content) VALUES (new.seq, new.name, new.content);
END;
CREATE TRIGGER documents_ad AFTER DELETE ON documents BEGIN
    INSERT INTO documents_fts (documents_fts, rowid, name, content)
    VALUES ('delete', old.seq, old.name, old.content);
END;
CREATE TRIGGER documents_au AFTER UPDATE ON documents BEGIN
    INSERT INTO documents_fts (documents_fts, rowid, name, content)
    VALUES ('delete', old.seq, old.name, old.content);
    INSERT INTO documents_fts (rowid, name, content) VALUES (new.seq, new.name, new.content);
END;

CREATE TABLE conversations (
    id         TEXT PRIMARY KEY,
    product    TEXT NOT NULL,
    title      TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
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
    created_at      INTEGER NOT NULL
);
CREATE INDEX messages_conversation ON messages (conversation_id, id);
