-- Orphan-blob sweeps look files up by blob key.
CREATE INDEX files_blob_key ON files (blob_key);
