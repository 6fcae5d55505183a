-- Lattice storage, schema 4 (SQLite dialect). Keep the number in step with ../postgres/.
-- Stored blobs are compressed with zstd (server/src/store/compress.rs; docs/storage.md,
-- "Compression"). A checkpoint records how its snapshot is stored: 0 = as it is (every
-- checkpoint written before schema 4), 1 = one zstd frame; `byte_size` stays the snapshot's own
-- length. A log run records its format in its first byte (1 = as before, 2 = compressed;
-- server/src/store/runs.rs), so `update_runs` keeps its rows as they are. Older builds refuse a
-- schema-4 database instead of misreading compressed blobs.
ALTER TABLE checkpoints ADD COLUMN encoding INTEGER NOT NULL DEFAULT 0;
