-- Lattice storage, schema 1 (Postgres dialect). Keep in step with ../sqlite/0001_update_log.sql.
-- See docs/storage.md for the meaning of every column. Document ids use the "C" collation so
-- that listing order and prefix ranges are bytewise, as in SQLite, whatever the cluster locale.

CREATE TABLE documents (
    id                    TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    created_at_ms         BIGINT NOT NULL,
    updated_at_ms         BIGINT NOT NULL,
    deleted_at_ms         BIGINT,
    head_seq              BIGINT NOT NULL,
    byte_count            BIGINT NOT NULL,
    checkpoint_seq        BIGINT NOT NULL DEFAULT 0,
    checkpoint_byte_count BIGINT NOT NULL DEFAULT 0,
    log_start_seq         BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE updates (
    doc_id          TEXT COLLATE "C" NOT NULL REFERENCES documents (id),
    seq             BIGINT NOT NULL,
    hlc             BIGINT NOT NULL,
    replica         BIGINT NOT NULL,
    author          TEXT,
    byte_size       BIGINT NOT NULL,
    committed_at_ms BIGINT NOT NULL,
    delta           BYTEA  NOT NULL,
    PRIMARY KEY (doc_id, seq)
);

CREATE TABLE checkpoints (
    doc_id        TEXT COLLATE "C" NOT NULL REFERENCES documents (id),
    seq           BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    byte_size     BIGINT NOT NULL,
    snapshot      BYTEA  NOT NULL,
    PRIMARY KEY (doc_id, seq)
);
