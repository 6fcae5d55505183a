//! Store benchmarks (a plain `main`, not a timed test):
//!
//! - durable append throughput with 1, 10, 100 and 1,000 concurrent writers, each awaiting its
//!   own append (so every counted update is committed), on SQLite (synchronous FULL and NORMAL)
//!   and, with `--postgres URL`, on Postgres;
//! - cold load time of a document with ~260,000 small updates, built from the automerge-paper
//!   keystroke trace, with and without checkpoints.
//!
//! ```text
//! cargo bench -p lattice-server --bench store -- [--traces /work/shared/traces] \
//!     [--postgres postgres://lattice:lattice@127.0.0.1:5432/lattice_test] [--seconds 2] \
//!     [--docs N] [--writers N] [--journal N] [--slice N] [--skip-load]
//! cargo bench -p lattice-server --bench store -- --disk [--traces DIR] [--postgres URL] \
//!     [--batch 64] [--samples 200] [--disk-dir DIR]
//! ```
//!
//! `--disk` measures only the trace document: its size on disk with the whole history (and,
//! on SQLite, where the bytes go), its cold load and `state_at` at random versions
//! (`store_disk/disk.rs`).
//!
//! `--writers N` measures only that writer count (for profiling one configuration);
//! `--journal N` and `--slice N` set `StoreConfig::journal_max_entries` and
//! `journal_slice_entries` (SQLite's journal: a drain cycle starts at N entries and moves
//! about N entries per transaction).
//!
//! Every figure is the median of 3 runs. Without `--traces` (and without the default
//! `/work/shared/traces`), the load benchmark types a synthetic trace of the same size. On
//! Postgres the benchmark writes documents named `bench-<time>/…` into the given database.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lattice_engine::{Delta, DocId, Document, ReplicaId};
use lattice_server::store::{NewEntry, SqliteSynchronous, Store, StoreConfig};

const WRITER_COUNTS: [usize; 4] = [1, 10, 100, 1_000];
const RUNS: usize = 3;
const DEFAULT_TRACES: &str = "/work/shared/traces";
const TRACE: &str = "sequential_traces/ascii_only/automerge-paper.json.gz";
const SYNTHETIC_UPDATES: usize = 260_000;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[path = "store_disk/disk.rs"]
mod disk;

#[derive(Debug)]
struct Args {
    traces: Option<PathBuf>,
    postgres: Option<String>,
    seconds: f64,
    /// Documents the writers share (writer `w` writes document `w % docs`); `None` = one each.
    docs: Option<usize>,
    /// Only this writer count; `None` = every count in [`WRITER_COUNTS`].
    writers: Option<usize>,
    skip_load: bool,
    /// `StoreConfig::journal_max_entries` (SQLite); `None` = the default.
    journal: Option<usize>,
    /// `StoreConfig::journal_slice_entries` (SQLite); `None` = the default.
    slice: Option<usize>,
    /// Only the trace document's footprint and load times (`disk.rs`).
    disk: bool,
    /// `--disk`: entries per group commit of the import.
    batch: usize,
    /// `--disk`: random versions loaded.
    samples: usize,
    /// `--disk`: the folder for the SQLite file, kept for inspection (default: a temporary one).
    disk_dir: Option<PathBuf>,
}

fn parse_args() -> Result<Args, BoxError> {
    let mut args = Args {
        traces: Path::new(DEFAULT_TRACES)
            .exists()
            .then(|| PathBuf::from(DEFAULT_TRACES)),
        postgres: None,
        seconds: 2.0,
        docs: None,
        writers: None,
        skip_load: false,
        journal: None,
        slice: None,
        disk: false,
        batch: 64,
        samples: 200,
        disk_dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--traces" => args.traces = it.next().map(PathBuf::from),
            "--postgres" => args.postgres = it.next(),
            "--seconds" => args.seconds = it.next().ok_or("--seconds N")?.parse()?,
            "--skip-load" => args.skip_load = true,
            "--docs" => args.docs = Some(it.next().ok_or("--docs N")?.parse()?),
            "--writers" => args.writers = Some(it.next().ok_or("--writers N")?.parse()?),
            "--journal" => args.journal = Some(it.next().ok_or("--journal N")?.parse()?),
            "--slice" => args.slice = Some(it.next().ok_or("--slice N")?.parse()?),
            "--disk" => args.disk = true,
            "--disk-dir" => args.disk_dir = it.next().map(PathBuf::from),
            "--batch" => args.batch = it.next().ok_or("--batch N")?.parse()?,
            "--samples" => args.samples = it.next().ok_or("--samples N")?.parse()?,
            // `cargo bench` passes `--bench`; ignore it and anything else unknown.
            _ => {}
        }
    }
    Ok(args)
}

#[derive(Debug, Clone)]
struct Target {
    name: &'static str,
    url: String,
    synchronous: SqliteSynchronous,
    journal: Option<usize>,
    slice: Option<usize>,
    _dir: Option<std::sync::Arc<tempfile::TempDir>>,
}

impl Target {
    fn config(&self, checkpoints: bool) -> StoreConfig {
        let mut c = StoreConfig {
            sqlite_synchronous: self.synchronous,
            ..StoreConfig::default()
        };
        if let Some(n) = self.journal {
            c.journal_max_entries = n;
        }
        if let Some(n) = self.slice {
            c.journal_slice_entries = n;
        }
        if !checkpoints {
            c.checkpoint_every_updates = 0;
            c.checkpoint_every_bytes = 0;
        }
        c
    }

    /// A fresh database for SQLite (a new file), or the shared Postgres database.
    fn fresh(&self, tag: &str) -> Result<Target, BoxError> {
        if self.name.starts_with("sqlite") {
            let dir = tempfile::tempdir()?;
            let url = format!(
                "sqlite://{}",
                dir.path().join(format!("{tag}.db")).display()
            );
            Ok(Target {
                url,
                _dir: Some(std::sync::Arc::new(dir)),
                ..self.clone()
            })
        } else {
            Ok(self.clone())
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn run_id() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Durable appends per second with `writers` tasks, each awaiting its own append.
async fn append_throughput(
    target: &Target,
    writers: usize,
    docs: Option<usize>,
    seconds: f64,
) -> Result<f64, BoxError> {
    let docs = docs.unwrap_or(writers).max(1);
    let target = target.fresh("append")?;
    let store = Store::open(&target.url, target.config(true)).await?;
    // A typical keystroke: one character typed into a Yjs text.
    let mut typist = Document::new(ReplicaId::from_random(42));
    let delta = typist.text_insert("text", 0, "a")?;
    let run = run_id();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(writers);
    for w in 0..writers {
        let store = store.clone();
        let doc = DocId::new(format!("bench-{run}/d{}", w % docs))?;
        let entry = NewEntry::new(doc, &delta, 1, ReplicaId::from_random(42), None);
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                store.append(entry.clone()).await?;
                n += 1;
            }
            Ok::<u64, BoxError>(n)
        }));
    }
    let mut total = 0u64;
    for t in tasks {
        total += t.await??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    store.close().await;
    Ok(total as f64 / elapsed)
}

#[derive(serde::Deserialize)]
struct Trace {
    txns: Vec<Txn>,
}

#[derive(serde::Deserialize)]
struct Txn {
    patches: Vec<(u32, u32, String)>,
}

/// The deltas of a document typed from the trace, one per insert or delete.
fn trace_deltas(traces: Option<&Path>) -> Result<(String, Vec<Delta>), BoxError> {
    let mut doc = Document::new(ReplicaId::from_random(7));
    let mut deltas = Vec::new();
    match traces {
        Some(dir) => {
            let path = dir.join(TRACE);
            let mut json = String::new();
            flate2::read::GzDecoder::new(std::fs::File::open(&path)?).read_to_string(&mut json)?;
            let trace: Trace = serde_json::from_str(&json)?;
            for txn in trace.txns {
                for (pos, del, ins) in txn.patches {
                    // ASCII only, so code points are UTF-16 units.
                    if del > 0 {
                        deltas.push(doc.text_delete("text", pos, del)?);
                    }
                    if !ins.is_empty() {
                        deltas.push(doc.text_insert("text", pos, &ins)?);
                    }
                }
            }
            Ok((
                format!("automerge-paper trace ({})", path.display()),
                deltas,
            ))
        }
        None => {
            // Synthetic typing: mostly appends near a moving cursor, some deletions.
            let mut x = 0x2545_f491_u64;
            for _ in 0..SYNTHETIC_UPDATES {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let len = doc.text_len("text");
                let pos = len.saturating_sub((x % 16) as u32);
                if x.is_multiple_of(7) && len > 0 {
                    deltas.push(doc.text_delete("text", pos.min(len - 1), 1)?);
                } else {
                    deltas.push(doc.text_insert("text", pos, "e")?);
                }
            }
            Ok(("synthetic typing trace".to_owned(), deltas))
        }
    }
}

/// Writes the trace into a fresh store, then times loading it from a newly opened store.
async fn cold_load(
    target: &Target,
    deltas: &[Delta],
    checkpoints: bool,
) -> Result<(Duration, u64), BoxError> {
    let target = target.fresh("load")?;
    let doc = DocId::new(format!("bench-{}/paper", run_id()))?;
    let store = Store::open(&target.url, target.config(checkpoints)).await?;
    let replica = ReplicaId::from_random(7);
    for chunk in deltas.chunks(4_096) {
        let entries = chunk
            .iter()
            .map(|d| NewEntry::new(doc.clone(), d, 0, replica, None))
            .collect();
        store.append_batch(entries).await?;
    }
    if checkpoints {
        // The background checkpointer may lag behind a bulk import; a server that just
        // imported would do the same.
        store.checkpoint_now(&doc).await?;
    }
    store.close().await;
    let mut times = Vec::new();
    let mut head = 0;
    for _ in 0..RUNS {
        let store = Store::open(&target.url, target.config(checkpoints)).await?;
        let start = Instant::now();
        let loaded = store
            .load(&doc, ReplicaId::from_random(1))
            .await?
            .ok_or("document missing")?;
        times.push(start.elapsed().as_secs_f64());
        head = loaded.head_seq;
        store.close().await;
    }
    Ok((Duration::from_secs_f64(median(times)), head))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = parse_args()?;
    if args.disk {
        let (source, deltas) = trace_deltas(args.traces.as_deref())?;
        println!("{} updates from the {source}", deltas.len());
        let temp = tempfile::tempdir()?;
        let dir = match &args.disk_dir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                let _ = std::fs::remove_file(d.join("disk.db"));
                d.clone()
            }
            None => temp.path().to_owned(),
        };
        let url = format!("sqlite://{}", dir.join("disk.db").display());
        disk::run(
            "sqlite",
            &url,
            Some(&dir),
            &deltas,
            args.batch,
            args.samples,
        )
        .await?;
        if let Some(pg) = &args.postgres {
            disk::run("postgres", pg, None, &deltas, args.batch, args.samples).await?;
        }
        return Ok(());
    }
    let mut targets = vec![
        Target {
            name: "sqlite (synchronous=FULL)",
            url: String::new(),
            synchronous: SqliteSynchronous::Full,
            journal: args.journal,
            slice: args.slice,
            _dir: None,
        },
        Target {
            name: "sqlite (synchronous=NORMAL)",
            url: String::new(),
            synchronous: SqliteSynchronous::Normal,
            journal: args.journal,
            slice: args.slice,
            _dir: None,
        },
    ];
    if let Some(url) = &args.postgres {
        targets.push(Target {
            name: "postgres",
            url: url.clone(),
            synchronous: SqliteSynchronous::Full,
            journal: args.journal,
            slice: args.slice,
            _dir: None,
        });
    } else {
        println!("(no --postgres URL: Postgres is not benchmarked)");
    }

    println!(
        "\nDurable append throughput, updates/s (median of {RUNS} runs of {}s; each writer awaits its commit; {})",
        args.seconds,
        match args.docs {
            Some(d) => format!("writers share {d} documents"),
            None => "one document per writer".to_owned(),
        }
    );
    let writer_counts: Vec<usize> = match args.writers {
        Some(w) => vec![w],
        None => WRITER_COUNTS.to_vec(),
    };
    print!("{:<30}", "backend");
    for &w in &writer_counts {
        print!("{:>14}", format!("{w} writers"));
    }
    println!();
    for t in &targets {
        print!("{:<30}", t.name);
        for &w in &writer_counts {
            let mut runs = Vec::new();
            for _ in 0..RUNS {
                runs.push(append_throughput(t, w, args.docs, args.seconds).await?);
            }
            print!("{:>14.0}", median(runs));
            std::io::Write::flush(&mut std::io::stdout())?;
        }
        println!();
    }

    if args.skip_load {
        return Ok(());
    }
    let built = Instant::now();
    let (source, deltas) = trace_deltas(args.traces.as_deref())?;
    println!(
        "\nCold load of a document with {} updates from the {source} (built in {:.1}s; median of {RUNS})",
        deltas.len(),
        built.elapsed().as_secs_f64()
    );
    println!(
        "{:<30}{:>20}{:>20}",
        "backend", "with checkpoints", "without (full log)"
    );
    for t in targets
        .iter()
        .filter(|t| t.synchronous == SqliteSynchronous::Full)
    {
        let (with, head) = cold_load(t, &deltas, true).await?;
        let (without, _) = cold_load(t, &deltas, false).await?;
        println!(
            "{:<30}{:>17.1} ms{:>17.1} ms   (head seq {head})",
            t.name,
            with.as_secs_f64() * 1e3,
            without.as_secs_f64() * 1e3
        );
    }
    Ok(())
}
