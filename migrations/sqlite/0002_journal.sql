-- Lattice storage, schema 2 (SQLite dialect). Keep the number in step with ../postgres/.
-- See docs/storage.md ("The journal") for why it exists and how it is drained.

-- Appends committed but not yet moved into `updates`. A group commit writes one row: every entry
-- of its transaction, for any number of documents, in one binary `payload` (format in
-- server/src/store/journal.rs). The store moves rows into `updates` (and their counters into
-- `documents`) in large batches, in sequence order, and deletes them in the same transaction;
-- it also does so when it opens, so after a crash nothing stays here for long. `id` orders the
-- rows as they were committed.
CREATE TABLE journal (
    id              INTEGER NOT NULL PRIMARY KEY,
    committed_at_ms INTEGER NOT NULL,
    entry_count     INTEGER NOT NULL,
    payload         BLOB    NOT NULL
);
