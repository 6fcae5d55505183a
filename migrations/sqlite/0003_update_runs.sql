-- Lattice storage, schema 3 (SQLite dialect). Keep the number in step with ../postgres/.
-- The log moves from one row per entry (`updates`) to one row per *run*: consecutive entries of
-- one document, `first_seq ..= last_seq`, dense. A journal drain writes one row per document
-- it drains instead of one per entry, which is what bounded SQLite's append rate. The blob
-- format is in server/src/store/runs.rs (big-endian integers, so that this migration can write
-- it); docs/storage.md describes the table.
CREATE TABLE update_runs (
    doc_id    TEXT    NOT NULL REFERENCES documents (id),
    first_seq INTEGER NOT NULL,
    last_seq  INTEGER NOT NULL,
    entries   BLOB    NOT NULL,
    CHECK (first_seq >= 1 AND last_seq >= first_seq)
);
-- Rows are appended in rowid order (so their blobs land at the end of the file); reads find a
-- document's runs through this index.
CREATE UNIQUE INDEX update_runs_by_doc ON update_runs (doc_id, first_seq, last_seq);

-- Every existing entry becomes a run of one (runs.rs: `layout_matches_the_migration`).
INSERT INTO update_runs (doc_id, first_seq, last_seq, entries)
SELECT doc_id, seq, seq,
       X'01'
       || unhex(printf('%016x%08x%016x', hlc, replica, committed_at_ms))
       || CASE WHEN author IS NULL THEN X'00'
               ELSE X'01' || unhex(printf('%08x', length(CAST(author AS BLOB))))
                    || CAST(author AS BLOB) END
       || unhex(printf('%08x', length(delta))) || delta
FROM updates
ORDER BY doc_id, seq;

DROP TABLE updates;
