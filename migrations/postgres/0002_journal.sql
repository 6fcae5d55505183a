-- Lattice storage, schema 2 (Postgres dialect). Keep the number in step with ../sqlite/.
-- Schema 2 adds the SQLite backend's journal (see ../sqlite/0002_journal.sql). Postgres has no
-- journal: its group commit inserts log entries into `updates` directly, which several server
-- processes sharing one database need (each reserves sequence numbers under a row lock). This
-- migration only records the table's meaning in the catalogue, so that both backends carry the
-- same schema version.
COMMENT ON TABLE updates IS
    'Append-only update log, one row per delta, dense seq per document; see docs/storage.md';
