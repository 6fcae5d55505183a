//! Crash test: a child process appends under load and is killed with SIGKILL at random
//! moments, 10 times per backend. After each kill the store is reopened and checked: every
//! sequence number the child reported committed is present, every document's log is dense
//! (1..=head, no gaps), every entry is whole (decodes, size matches) and every document loads.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lattice_engine::ReplicaId;
use lattice_server::store::{Store, StoreConfig};
use lattice_tests::store_support::{Kind, TestDb, doc};

const ROUNDS: usize = 10;
const WRITERS: &str = "24";
const DOCS: &str = "4";

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Runs the child until it has reported `warmup` commits, waits a random while longer, kills
/// it with SIGKILL and returns the complete lines it printed.
fn run_and_kill(url: &str, rng: &mut Rng) -> Vec<String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_store_crash_writer"))
        .args([url, WRITERS, DOCS])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn store_crash_writer");
    let stdout = child.stdout.take().expect("piped stdout");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let lines = lines.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    // A line cut by the kill is not a report: it has no newline.
                    Ok(_) if buf.ends_with(b"\n") => {
                        let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                        lines.lock().expect("lines").push(line);
                    }
                    Ok(_) => break,
                }
            }
        })
    };
    let warmup = 1 + rng.below(200) as usize;
    let start = Instant::now();
    while lines.lock().expect("lines").len() < warmup {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("store_crash_writer exited early: {status}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "store_crash_writer made no progress"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(rng.below(120)));
    child.kill().expect("SIGKILL"); // `Child::kill` is SIGKILL on Unix.
    child.wait().expect("reap");
    reader.join().expect("reader thread");
    lines.lock().expect("lines").clone()
}

fn crash_rounds(kind: Kind) {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    eprintln!("crash test ({kind:?}) seed {seed}");
    let mut rng = Rng(seed);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let db = rt.block_on(TestDb::new(kind));
    let mut reported: BTreeMap<String, u64> = BTreeMap::new();
    let mut total = 0usize;
    for round in 0..ROUNDS {
        let lines = run_and_kill(&db.url, &mut rng);
        total += lines.len();
        for line in &lines {
            let (id, seq) = line.split_once(' ').expect("`doc seq` line");
            let seq: u64 = seq.parse().expect("seq");
            let max = reported.entry(id.to_owned()).or_default();
            *max = (*max).max(seq);
        }
        rt.block_on(async {
            let store = Store::open(&db.url, StoreConfig::default())
                .await
                .expect("reopen after SIGKILL");
            for (id, max_reported) in &reported {
                let id = doc(id);
                let meta = store.document(&id).await.expect("meta").expect("exists");
                assert!(
                    meta.head_seq >= *max_reported,
                    "round {round} (seed {seed}): {id} reported {max_reported} committed, head is {}",
                    meta.head_seq
                );
                let log = store.read_log(&id, 1, u32::MAX).await.expect("read_log");
                let seqs: Vec<u64> = log.iter().map(|e| e.seq).collect();
                assert_eq!(
                    seqs,
                    (1..=meta.head_seq).collect::<Vec<_>>(),
                    "round {round} (seed {seed}): {id} log is not dense"
                );
                for e in &log {
                    assert_eq!(e.byte_size, e.delta_bytes.len() as u64, "torn entry");
                    e.delta(&id).expect("entry decodes");
                }
                let loaded = store
                    .load(&id, ReplicaId::from_random(1))
                    .await
                    .expect("load")
                    .expect("exists");
                assert_eq!(loaded.head_seq, meta.head_seq);
            }
            store.close().await;
        });
    }
    eprintln!("crash test ({kind:?}): {ROUNDS} kills, {total} acknowledged appends verified");
    assert!(total >= ROUNDS, "the child appended under load");
    rt.block_on(db.cleanup());
}

#[test]
fn sqlite_survives_sigkill() {
    crash_rounds(Kind::Sqlite);
}

#[test]
fn postgres_survives_sigkill() {
    crash_rounds(Kind::Postgres);
}

/// Two server processes append to the same four documents of one PostgreSQL database at once
/// (a cluster's nodes): the head-row lock of each commit must give every document a dense log
/// with each seq committed by exactly one process, whichever commits it.
#[test]
fn two_processes_appending_to_one_postgres_document_get_dense_unique_seqs() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let db = rt.block_on(TestDb::new(Kind::Postgres));
    let url = db.url.clone();
    let first = std::thread::spawn({
        let url = url.clone();
        let mut rng = Rng(rng.below(u64::MAX) | 1);
        move || run_and_kill(&url, &mut rng)
    });
    let second = run_and_kill(&url, &mut rng);
    let first = first.join().expect("first writer");
    let mut owner: BTreeMap<(String, u64), usize> = BTreeMap::new();
    for (process, lines) in [&first, &second].into_iter().enumerate() {
        for line in lines {
            let (id, seq) = line.split_once(' ').expect("`doc seq` line");
            let seq: u64 = seq.parse().expect("seq");
            if let Some(other) = owner.insert((id.to_owned(), seq), process) {
                panic!(
                    "{id} seq {seq} reported committed by writer {other} and by writer {process}"
                );
            }
        }
    }
    assert!(
        !first.is_empty() && !second.is_empty(),
        "both processes appended"
    );
    rt.block_on(async {
        let store = Store::open(&url, StoreConfig::default())
            .await
            .expect("reopen");
        for d in 0..4 {
            let id = doc(&format!("crash/{d}"));
            let Some(meta) = store.document(&id).await.expect("meta") else {
                continue;
            };
            let seqs: Vec<u64> = store
                .read_log(&id, 1, u32::MAX)
                .await
                .expect("read_log")
                .iter()
                .map(|e| e.seq)
                .collect();
            assert_eq!(
                seqs,
                (1..=meta.head_seq).collect::<Vec<_>>(),
                "{id}: not dense"
            );
            let reported = owner.keys().filter(|(doc, _)| *doc == id.as_str()).count();
            assert!(
                reported as u64 <= meta.head_seq,
                "{id}: more reports than entries"
            );
        }
        store.close().await;
    });
    eprintln!(
        "two writers: {} and {} acknowledged appends, no seq given twice",
        first.len(),
        second.len()
    );
    rt.block_on(db.cleanup());
}
