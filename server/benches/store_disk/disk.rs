//! `--disk`: what the trace document costs with its whole history, and how fast it loads.
//!
//! The trace's deltas are appended the way a live server appends them: in group commits of
//! `--batch` entries (default 64, about what the `cold` scenario's replay commits at once),
//! with every HLC stamped, the background checkpointer on and the default `StoreConfig`. The
//! store is then closed (draining the journal, as a server does on SIGTERM) and measured:
//!
//! - the files' size (database, WAL and shared memory), and on SQLite where it goes
//!   (`dbstat`: bytes of pages per table and index, free pages), with the stored checkpoints;
//! - cold load: a store opened afresh, then `load` (newest checkpoint plus tail), median of 5;
//! - `state_at` at `--samples` random versions on one open store: median, p95 and max.

use std::path::Path;
use std::time::Instant;

use lattice_engine::{DEFAULT_MAX_DRIFT, Delta, DocId, Hlc, ReplicaId};
use lattice_server::store::{NewEntry, Store, StoreConfig};

use super::{BoxError, median};

/// Cold loads timed per backend.
const COLD_RUNS: usize = 5;

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

/// Appends `deltas` to `doc` in group commits of `batch`, stamped as a room stamps them.
async fn import(
    store: &Store,
    doc: &DocId,
    deltas: &[Delta],
    batch: usize,
) -> Result<f64, BoxError> {
    let replica = ReplicaId::from_random(7);
    let mut hlc = Hlc::new(ReplicaId::from_random(1), DEFAULT_MAX_DRIFT);
    let start = Instant::now();
    for chunk in deltas.chunks(batch.max(1)) {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as u64;
        let entries = chunk
            .iter()
            .map(|d| NewEntry::new(doc.clone(), d, hlc.tick(now_ms).time, replica, None))
            .collect();
        store.append_batch(entries).await?;
    }
    Ok(deltas.len() as f64 / start.elapsed().as_secs_f64())
}

/// Where the SQLite file's pages go, from the `dbstat` virtual table.
async fn sqlite_breakdown(url: &str) -> Result<(), BoxError> {
    let pool = sqlx::SqlitePool::connect(url).await?;
    let (page_size,): (i64,) = sqlx::query_as("PRAGMA page_size").fetch_one(&pool).await?;
    let (pages,): (i64,) = sqlx::query_as("PRAGMA page_count").fetch_one(&pool).await?;
    let (free,): (i64,) = sqlx::query_as("PRAGMA freelist_count")
        .fetch_one(&pool)
        .await?;
    println!(
        "  file: {pages} pages of {page_size} B = {:.2} MiB, of which {free} free ({:.2} MiB)",
        mib((pages * page_size) as u64),
        mib((free * page_size) as u64)
    );
    let rows: Result<Vec<(String, i64, i64, i64)>, _> = sqlx::query_as(
        "SELECT name, COUNT(*), SUM(pgsize), SUM(payload) FROM dbstat GROUP BY name \
         ORDER BY SUM(pgsize) DESC",
    )
    .fetch_all(&pool)
    .await;
    match rows {
        Ok(rows) => {
            for (name, n, size, payload) in rows {
                println!(
                    "  {name:<28}{n:>8} pages {:>9.2} MiB  (payload {:.2} MiB)",
                    mib(size as u64),
                    mib(payload as u64)
                );
            }
        }
        Err(e) => println!("  (no dbstat in this SQLite build: {e})"),
    }
    let (runs, entries, run_bytes): (i64, i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COALESCE(SUM(last_seq - first_seq + 1), 0), \
         COALESCE(SUM(length(entries)), 0) FROM update_runs",
    )
    .fetch_one(&pool)
    .await?;
    println!(
        "  update_runs: {runs} runs, {entries} entries, {:.2} MiB of blobs ({:.1} B/entry)",
        mib(run_bytes as u64),
        run_bytes as f64 / entries.max(1) as f64
    );
    let cps: Vec<(i64, i64, i64)> =
        sqlx::query_as("SELECT seq, byte_size, length(snapshot) FROM checkpoints ORDER BY seq")
            .fetch_all(&pool)
            .await?;
    let stored: i64 = cps.iter().map(|c| c.2).sum();
    let raw: i64 = cps.iter().map(|c| c.1).sum();
    println!(
        "  checkpoints: {} kept, {:.2} MiB stored ({:.2} MiB as snapshots), at {:?}",
        cps.len(),
        mib(stored as u64),
        mib(raw as u64),
        cps.iter().map(|c| c.0).collect::<Vec<_>>()
    );
    pool.close().await;
    Ok(())
}

/// The stored bytes of `doc` on Postgres, per table (the database may hold other documents).
async fn postgres_breakdown(url: &str, doc: &DocId) -> Result<(), BoxError> {
    let pool = sqlx::PgPool::connect(url).await?;
    let (rows, log): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), CAST(COALESCE(SUM(pg_column_size(u.*)), 0) AS BIGINT) \
         FROM updates u WHERE doc_id = $1",
    )
    .bind(doc.as_str())
    .fetch_one(&pool)
    .await?;
    let (cps, cp_bytes): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), CAST(COALESCE(SUM(pg_column_size(snapshot)), 0) AS BIGINT) \
         FROM checkpoints WHERE doc_id = $1",
    )
    .bind(doc.as_str())
    .fetch_one(&pool)
    .await?;
    println!(
        "  updates: {rows} rows, {:.2} MiB of row data; checkpoints: {cps}, {:.2} MiB stored",
        mib(log as u64),
        mib(cp_bytes as u64)
    );
    pool.close().await;
    Ok(())
}

/// Imports the trace into a fresh store at `url` and prints its footprint and load times.
pub(crate) async fn run(
    name: &str,
    url: &str,
    dir: Option<&Path>,
    deltas: &[Delta],
    batch: usize,
    samples: usize,
) -> Result<(), BoxError> {
    let config = StoreConfig::default();
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let doc = DocId::new(format!("bench-{run_id}/paper"))?;
    let store = Store::open(url, config.clone()).await?;
    let rate = import(&store, &doc, deltas, batch).await?;
    // What the background checkpointer may still owe is written at the next append; a server
    // that stopped here would have the same.
    store.close().await;
    println!(
        "{name}: {} updates appended at {rate:.0}/s in group commits of {batch}",
        deltas.len()
    );
    if let Some(dir) = dir {
        println!("  on disk: {:.2} MiB", mib(dir_bytes(dir)));
        sqlite_breakdown(url).await?;
    } else {
        postgres_breakdown(url, &doc).await?;
    }

    let mut opens = Vec::new();
    let mut loads = Vec::new();
    let mut head = 0;
    for _ in 0..COLD_RUNS {
        let started = Instant::now();
        let store = Store::open(url, config.clone()).await?;
        let opened = started.elapsed().as_secs_f64();
        let loading = Instant::now();
        let loaded = store
            .load(&doc, ReplicaId::from_random(1))
            .await?
            .ok_or("document missing")?;
        loads.push(loading.elapsed().as_secs_f64() * 1e3);
        opens.push(opened * 1e3);
        head = loaded.head_seq;
        store.close().await;
    }
    println!(
        "  cold load (median of {COLD_RUNS}): open {:.1} ms, then load {:.1} ms (head {head})",
        median(opens),
        median(loads)
    );

    let store = Store::open(url, config).await?;
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let seq = x % (head + 1);
        let start = Instant::now();
        store.state_at(&doc, seq, ReplicaId::from_random(1)).await?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    store.close().await;
    times.sort_by(f64::total_cmp);
    let at = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    println!(
        "  state_at a random version ({samples} samples): median {:.1} ms, p95 {:.1} ms, \
         max {:.1} ms",
        at(0.5),
        at(0.95),
        at(1.0)
    );
    Ok(())
}
