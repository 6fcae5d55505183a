//! History benchmark (a plain `main`, not a timed test): the content of a document at a random
//! version, for a document with ~260,000 updates in its log, typed from the automerge-paper
//! keystroke trace.
//!
//! ```text
//! cargo bench -p lattice-server --bench history -- \
//!     --trace /work/shared/traces/sequential_traces/automerge-paper.json.gz \
//!     [--postgres postgres://lattice:lattice@127.0.0.1:5432/lattice_test] [--samples 200] \
//!     [--no-history-checkpoints]
//! ```
//!
//! The log is imported in chunks of 1,000 updates with a checkpoint after each chunk, as the
//! background checkpointer does for a document edited live (every
//! `StoreConfig::checkpoint_every_updates` = 1,000 updates); the store then thins old
//! checkpoints to one per `history_checkpoint_every_updates` (5,000). Each sample opens nothing
//! new: it asks a running store for `history::content` (rebuild at the version, then the JSON
//! view) at a uniformly random version. Prints the median, p95 and max; then the time of a
//! history page of 100 entries (summaries and sessions) starting at a random point.

use std::io::Read as _;
use std::time::Instant;

use lattice_engine::{Delta, DocId, Document, ReplicaId};
use lattice_server::store::{NewEntry, Store, StoreConfig};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(serde::Deserialize)]
struct Trace {
    txns: Vec<Txn>,
}

#[derive(serde::Deserialize)]
struct Txn {
    patches: Vec<(u32, u32, String)>,
}

/// One delta per insert or delete. Trace positions count code points; Yjs offsets count UTF-16
/// units, so positions are converted once the text holds anything outside the BMP.
fn trace_deltas(path: &str) -> Result<Vec<Delta>, BoxError> {
    let mut json = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path)?).read_to_string(&mut json)?;
    let trace: Trace = serde_json::from_str(&json)?;
    let mut doc = Document::new(ReplicaId::from_random(7));
    let mut deltas = Vec::new();
    let mut wide = false;
    let utf16 = |doc: &Document, wide: bool, cp: u32| -> u32 {
        if !wide {
            return cp;
        }
        doc.text("text")
            .chars()
            .take(cp as usize)
            .map(|c| c.len_utf16() as u32)
            .sum()
    };
    for txn in trace.txns {
        for (pos, del, ins) in txn.patches {
            let at = utf16(&doc, wide, pos);
            if del > 0 {
                let end = utf16(&doc, wide, pos + del);
                deltas.push(doc.text_delete("text", at, end - at)?);
            }
            if !ins.is_empty() {
                wide |= ins.chars().any(|c| c.len_utf16() > 1);
                deltas.push(doc.text_insert("text", at, &ins)?);
            }
        }
    }
    Ok(deltas)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn run(
    name: &str,
    url: &str,
    deltas: &[Delta],
    samples: usize,
    history_checkpoints: bool,
) -> Result<(), BoxError> {
    let mut config = StoreConfig {
        // Checkpoints are written explicitly below, every 1,000 updates, like live editing.
        checkpoint_every_updates: 0,
        checkpoint_every_bytes: 0,
        ..StoreConfig::default()
    };
    if !history_checkpoints {
        config.history_checkpoint_every_updates = 0;
    }
    let store = Store::open(url, config.clone()).await?;
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let doc = DocId::new(format!("bench-{run_id}/paper"))?;
    let replica = ReplicaId::from_random(7);
    let imported = Instant::now();
    for chunk in deltas.chunks(1_000) {
        let entries = chunk
            .iter()
            .map(|d| NewEntry::new(doc.clone(), d, 0, replica, None))
            .collect();
        store.append_batch(entries).await?;
        store.checkpoint_now(&doc).await?;
    }
    let head = store.document(&doc).await?.ok_or("missing")?.head_seq;
    store.close().await;
    let (count, bytes) = checkpoint_footprint(url, &doc).await?;
    eprintln!(
        "{name}: {count} checkpoints kept, {:.1} MiB",
        bytes as f64 / 1_048_576.0
    );
    eprintln!(
        "{name}: imported {head} updates in {:.1}s",
        imported.elapsed().as_secs_f64()
    );

    let store = Store::open(url, config).await?;
    let server = ReplicaId::from_random(1);
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let seq = x % (head + 1);
        let start = Instant::now();
        let content = lattice_server::history::content(&store, &doc, Some(seq), server).await?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
        assert_eq!(content.seq, seq);
    }
    let mut pages = Vec::new();
    for _ in 0..(samples / 10).max(3) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let after = x % head.saturating_sub(100).max(1);
        let start = Instant::now();
        let page = lattice_server::history::history(
            &store,
            &doc,
            lattice_server::history::HistoryQuery {
                after,
                limit: 100,
                ..Default::default()
            },
            server,
        )
        .await?;
        pages.push(start.elapsed().as_secs_f64() * 1e3);
        assert_eq!(page.entries.len(), 100);
    }
    store.close().await;
    pages.sort_by(f64::total_cmp);
    times.sort_by(f64::total_cmp);
    println!(
        "{name:<10} history page of 100 entries at a random point ({} samples): median {:.1} ms, \
         max {:.1} ms",
        pages.len(),
        percentile(&pages, 0.5),
        pages[pages.len() - 1]
    );
    println!(
        "{name:<10} content at a random version of {head} updates ({samples} samples): \
         median {:.1} ms, p95 {:.1} ms, max {:.1} ms",
        percentile(&times, 0.5),
        percentile(&times, 0.95),
        times[times.len() - 1]
    );
    Ok(())
}

/// How many checkpoints the store kept for `doc`, and their total size in bytes.
async fn checkpoint_footprint(url: &str, doc: &DocId) -> Result<(i64, i64), BoxError> {
    const SQL: &str = "SELECT COUNT(*), CAST(COALESCE(SUM(byte_size), 0) AS BIGINT) FROM checkpoints WHERE doc_id = $1";
    Ok(if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await?;
        let row: (i64, i64) = sqlx::query_as(SQL)
            .bind(doc.as_str())
            .fetch_one(&pool)
            .await?;
        pool.close().await;
        row
    } else {
        let pool = sqlx::PgPool::connect(url).await?;
        let row: (i64, i64) = sqlx::query_as(SQL)
            .bind(doc.as_str())
            .fetch_one(&pool)
            .await?;
        pool.close().await;
        row
    })
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut trace = None;
    let mut postgres = None;
    let mut samples = 200usize;
    let mut history_checkpoints = true;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--trace" => trace = it.next(),
            "--postgres" => postgres = it.next(),
            "--samples" => samples = it.next().ok_or("--samples N")?.parse()?,
            // Keep only the newest checkpoints, as before history checkpoints existed.
            "--no-history-checkpoints" => history_checkpoints = false,
            // `cargo bench` passes `--bench`; ignore it and anything else unknown.
            _ => {}
        }
    }
    let trace = trace.ok_or("--trace PATH (automerge-paper.json.gz) is required")?;
    let built = Instant::now();
    let deltas = trace_deltas(&trace)?;
    eprintln!(
        "{} deltas from {trace} in {:.1}s",
        deltas.len(),
        built.elapsed().as_secs_f64()
    );
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("history.db").display());
    run("sqlite", &url, &deltas, samples, history_checkpoints).await?;
    if let Some(pg) = postgres {
        run("postgres", &pg, &deltas, samples, history_checkpoints).await?;
    }
    Ok(())
}
