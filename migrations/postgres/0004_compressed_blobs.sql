-- Lattice storage, schema 4 (Postgres dialect). Keep the number in step with ../sqlite/.
-- Checkpoints are compressed with zstd (server/src/store/compress.rs; docs/storage.md,
-- "Compression"), in the same format on both backends. A checkpoint records how its snapshot
-- is stored: 0 = as it is (every checkpoint written before schema 4), 1 = one zstd frame;
-- `byte_size` stays the snapshot's own length. The log (`updates`) keeps one row per entry,
-- uncompressed: a single delta is too small for zstd to gain anything.
ALTER TABLE checkpoints ADD COLUMN encoding BIGINT NOT NULL DEFAULT 0;
-- A compressed snapshot gains nothing from TOAST's own compression; store it out of line as it is.
ALTER TABLE checkpoints ALTER COLUMN snapshot SET STORAGE EXTERNAL;
