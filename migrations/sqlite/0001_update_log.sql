-- Lattice storage, schema 1 (SQLite dialect). Keep in step with ../postgres/0001_update_log.sql.
-- See docs/storage.md for the meaning of every column.

-- One row per document. `head_seq` is the number of updates ever appended (the last sequence
-- number); `byte_count` the total size of their deltas. `checkpoint_seq` and
-- `checkpoint_byte_count` record where the newest checkpoint was taken, so the group committer can
-- tell when the next one is due. `log_start_seq` is the retention cut: log entries with
-- `seq <= log_start_seq` were dropped, and a checkpoint at exactly that sequence number is kept.
CREATE TABLE documents (
    id                    TEXT    NOT NULL PRIMARY KEY,
    created_at_ms         INTEGER NOT NULL,
    updated_at_ms         INTEGER NOT NULL,
    deleted_at_ms         INTEGER,
    head_seq              INTEGER NOT NULL,
    byte_count            INTEGER NOT NULL,
    checkpoint_seq        INTEGER NOT NULL DEFAULT 0,
    checkpoint_byte_count INTEGER NOT NULL DEFAULT 0,
    log_start_seq         INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- The append-only update log. `seq` is dense per document, from 1, assigned by the store inside
-- the transaction that inserts the row. `hlc` is the u64 HLC time stored bit for bit in a signed
-- 64-bit integer (0 = no stamp). `delta` is an engine Delta encoded with rmp_serde::to_vec_named.
CREATE TABLE updates (
    doc_id          TEXT    NOT NULL REFERENCES documents (id),
    seq             INTEGER NOT NULL,
    hlc             INTEGER NOT NULL,
    replica         INTEGER NOT NULL,
    author          TEXT,
    byte_size       INTEGER NOT NULL,
    committed_at_ms INTEGER NOT NULL,
    delta           BLOB    NOT NULL,
    PRIMARY KEY (doc_id, seq)
) WITHOUT ROWID;

-- Full snapshots (Document::snapshot) of a document as of sequence number `seq`.
CREATE TABLE checkpoints (
    doc_id        TEXT    NOT NULL REFERENCES documents (id),
    seq           INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    byte_size     INTEGER NOT NULL,
    snapshot      BLOB    NOT NULL,
    PRIMARY KEY (doc_id, seq)
) WITHOUT ROWID;
