-- Lattice storage, schema 3 (Postgres dialect). Keep the number in step with ../sqlite/.
-- Schema 3 stores the SQLite log as runs of consecutive entries (see
-- ../sqlite/0003_update_runs.sql), because SQLite drains its journal into the log in bulk.
-- Postgres appends each group commit straight into `updates`, one row per entry, and keeps
-- that table; this migration only records the difference in the catalogue, so that both
-- backends carry the same schema version.
COMMENT ON COLUMN updates.seq IS
    'Dense per document from 1; the SQLite backend stores the same log as runs (update_runs)';
