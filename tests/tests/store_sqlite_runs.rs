//! The SQLite log's physical layout: entries are stored as runs of consecutive entries of one
//! document (`update_runs`, docs/storage.md). The contract suite checks behaviour through the
//! `Store` API on both backends; these tests look at the rows themselves: how drains cut runs,
//! what a damaged run reports, and that migration 0003 moves a schema-2 log into runs intact.

use std::path::Path;

use lattice_engine::ReplicaId;
use lattice_server::store::{NewEntry, ReadError, Retention, Store, StoreConfig};
use lattice_tests::store_support::{
    Kind, RunCodec, TestDb, Writer, assert_loads, doc, manual_checkpoints, same_content,
};
use sqlx::Connection as _;

const SERVER: ReplicaId = ReplicaId::from_random(0x5e11);

async fn runs_of(db: &TestDb, id: &str) -> Vec<(i64, i64, Vec<u8>)> {
    let mut conn = sqlx::SqliteConnection::connect(&db.url)
        .await
        .expect("connect");
    let rows = sqlx::query_as(
        "SELECT first_seq, last_seq, entries FROM update_runs WHERE doc_id = $1 \
         ORDER BY first_seq",
    )
    .bind(id)
    .fetch_all(&mut conn)
    .await
    .expect("select");
    let _ = conn.close().await;
    rows
}

/// One drain of 2,500 journaled entries of one document writes 3 runs (1,024 entries at most
/// each), dense and in order; reads across run boundaries see exactly the entries they should,
/// and a retention cut inside a run rewrites that run to start after the cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_cuts_runs_and_retention_trims_them() {
    let db = TestDb::new(Kind::Sqlite).await;
    let store = db
        .open(StoreConfig {
            retention: Retention::DropBeforeCheckpoint {
                keep_updates: 1_000,
            },
            ..manual_checkpoints()
        })
        .await;
    let id = doc("long");
    let mut w = Writer::new(3);
    let entries: Vec<NewEntry> = (0..2_500u32).map(|i| w.entry(&id, i)).collect();
    // One transaction, so however the drains fall, the entries drain together.
    store.append_batch(entries).await.expect("append");
    store.drain_journal().await.expect("drain");

    assert_eq!(
        ranges(&runs_of(&db, "long").await),
        [(1, 1024), (1025, 2048), (2049, 2500)]
    );
    check_runs(&runs_of(&db, "long").await);
    let log = store.read_log(&id, 1_000, 100).await.expect("read_log");
    let seqs: Vec<u64> = log.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1_000..1_100).collect::<Vec<_>>());
    let all = store.read_log(&id, 1, u32::MAX).await.expect("read_log");
    assert!(all.iter().map(|e| e.seq).eq(1..=2_500));
    assert_loads(&store, &id, 2_500, &w.document).await;

    // A checkpoint at 1,000 (inside the first run), written as the checkpointer would have.
    let at_1000 = store.state_at(&id, 1_000, SERVER).await.expect("state_at");
    let snapshot = at_1000.snapshot();
    let mut conn = sqlx::SqliteConnection::connect(&db.url)
        .await
        .expect("connect");
    sqlx::query(
        "INSERT INTO checkpoints (doc_id, seq, created_at_ms, byte_size, snapshot) \
         VALUES ('long', 1000, 0, $1, $2)",
    )
    .bind(snapshot.len() as i64)
    .bind(&snapshot)
    .execute(&mut conn)
    .await
    .expect("insert checkpoint");
    let _ = conn.close().await;
    // The next checkpoint (2,500) keeps 1,000 updates: the cut is the one at 1,000.
    assert_eq!(store.checkpoint_now(&id).await.expect("cp"), Some(2_500));
    let meta = store.document(&id).await.expect("meta").expect("exists");
    assert_eq!(meta.log_start_seq, 1_000);
    let runs = runs_of(&db, "long").await;
    assert_eq!(ranges(&runs), [(1001, 1024), (1025, 2048), (2049, 2500)]);
    check_runs(&runs);
    let kept = RunCodec::decode(&runs[0].2);
    let from_log: Vec<Vec<u8>> = all[1_000..1_024]
        .iter()
        .map(|e| e.delta_bytes.clone())
        .collect();
    assert_eq!(
        kept.iter().map(|e| e.delta.clone()).collect::<Vec<_>>(),
        from_log
    );
    assert!(matches!(
        store.read_log(&id, 1_000, 5).await,
        Err(ReadError::Truncated { .. })
    ));
    let log = store.read_log(&id, 1_001, 30).await.expect("read_log");
    assert!(log.iter().map(|e| e.seq).eq(1_001..1_031));
    let at = store
        .state_at(&id, 1_000, SERVER)
        .await
        .expect("at the cut");
    assert_eq!(at.to_json(), at_1000.to_json());
    let at = store
        .state_at(&id, 1_030, SERVER)
        .await
        .expect("after the cut");
    let mut want = at_1000;
    for e in &log {
        want.apply(&rmp_serde::from_slice(&e.delta_bytes).expect("delta"))
            .expect("apply");
    }
    assert!(same_content(&at, &want));
    assert_loads(&store, &id, 2_500, &w.document).await;
    store.close().await;
}

fn ranges(runs: &[(i64, i64, Vec<u8>)]) -> Vec<(i64, i64)> {
    runs.iter().map(|r| (r.0, r.1)).collect()
}

/// Every run decodes (with this crate's own reading of the format) to exactly its range, and
/// the runs follow each other without a gap.
fn check_runs(runs: &[(i64, i64, Vec<u8>)]) {
    for pair in runs.windows(2) {
        assert_eq!(pair[0].1 + 1, pair[1].0, "gap or overlap");
    }
    for (first, last, blob) in runs {
        assert_eq!(RunCodec::decode(blob).len() as i64, last - first + 1);
    }
}

/// A run blob that does not decode at all makes the whole run unreadable: loading and reading
/// the log name the document and the run's first entry; other documents load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbled_run_names_its_first_entry() {
    let db = TestDb::new(Kind::Sqlite).await;
    let store = db.open(manual_checkpoints()).await;
    let (bad, good) = (doc("garbled"), doc("fine"));
    let (mut wb, mut wg) = (Writer::new(1), Writer::new(2));
    for round in 0..2u32 {
        let batch: Vec<NewEntry> = (0..5u32)
            .flat_map(|i| [wb.entry(&bad, i + round), wg.entry(&good, i)])
            .collect();
        store.append_batch(batch).await.expect("append");
        store.drain_journal().await.expect("drain");
    }
    assert_eq!(ranges(&runs_of(&db, "garbled").await), [(1, 5), (6, 10)]);
    db.execute(
        "UPDATE update_runs SET entries = $1 WHERE doc_id = 'garbled' AND first_seq = 6",
        Some(vec![0x01, 0xde, 0xad]),
    )
    .await;
    for err in [
        store
            .load(&bad, SERVER)
            .await
            .map(|_| ())
            .expect_err("load"),
        store
            .read_log(&bad, 7, 2)
            .await
            .map(|_| ())
            .expect_err("log"),
    ] {
        match &err {
            ReadError::CorruptDelta {
                doc,
                seq: 6,
                damage,
            } => {
                assert_eq!(doc.as_str(), "garbled");
                assert!(damage.to_string().contains("6..=10"), "{damage}");
            }
            other => panic!("expected CorruptDelta at 6, got {other:?}"),
        }
    }
    // Entries before the damaged run still read, and the other document is untouched.
    assert_eq!(store.read_log(&bad, 1, 5).await.expect("log").len(), 5);
    store
        .state_at(&bad, 5, SERVER)
        .await
        .expect("before the run");
    assert_loads(&store, &good, 10, &wg.document).await;
    store.close().await;
}

/// A database written by schema 2 (one `updates` row per entry) opens with every entry intact:
/// migration 0003 turns each row into a run of one, in SQL, and drops the old table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_2_log_moves_into_runs() {
    let db = TestDb::new(Kind::Sqlite).await;
    // Schema 2 exactly as released: the first two migration files, applied by sqlx (so their
    // checksums are recorded as a real schema-2 database has them).
    let old = tempfile::tempdir().expect("temporary directory");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations/sqlite");
    for name in ["0001_update_log.sql", "0002_journal.sql"] {
        std::fs::copy(source.join(name), old.path().join(name)).expect("copy migration");
    }
    let options = db
        .url
        .parse::<sqlx::sqlite::SqliteConnectOptions>()
        .expect("url")
        .create_if_missing(true);
    let mut conn = sqlx::SqliteConnection::connect_with(&options)
        .await
        .expect("connect");
    sqlx::migrate::Migrator::new(old.path())
        .await
        .expect("migrator")
        .run(&mut conn)
        .await
        .expect("schema 2");

    // The byte count is filled in below, once the deltas exist.
    sqlx::query(
        "INSERT INTO documents (id, created_at_ms, updated_at_ms, head_seq, byte_count) \
         VALUES ('old', 1700000000000, 1700000000003, 4, 0)",
    )
    .execute(&mut conn)
    .await
    .expect("insert document");
    let id = doc("old");
    let mut w = Writer::new(4);
    let mut want = Vec::new();
    let authors = [None, Some("alice"), Some("bob ✓"), None];
    for (i, author) in authors.iter().enumerate() {
        let delta = w.next_delta(i as u32);
        let bytes = rmp_serde::to_vec_named(&delta).expect("encode");
        let hlc = if i == 2 { u64::MAX } else { 1_000 + i as u64 };
        sqlx::query(
            "INSERT INTO updates (doc_id, seq, hlc, replica, author, byte_size, \
             committed_at_ms, delta) VALUES ('old', $1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(i as i64 + 1)
        .bind(i64::from_ne_bytes(hlc.to_ne_bytes()))
        .bind(i64::from(w.document.replica().get()))
        .bind(*author)
        .bind(bytes.len() as i64)
        .bind(1_700_000_000_000 + i as i64)
        .bind(&bytes)
        .execute(&mut conn)
        .await
        .expect("insert update");
        want.push((i as u64 + 1, hlc, author.map(str::to_owned), bytes));
    }
    let total: i64 = want.iter().map(|w| w.3.len() as i64).sum();
    sqlx::query("UPDATE documents SET byte_count = $1 WHERE id = 'old'")
        .bind(total)
        .execute(&mut conn)
        .await
        .expect("count bytes");
    let _ = conn.close().await;

    let store = db.open(manual_checkpoints()).await;
    let log = store.read_log(&id, 1, 10).await.expect("read_log");
    let got: Vec<_> = log
        .iter()
        .map(|e| (e.seq, e.hlc, e.author.clone(), e.delta_bytes.clone()))
        .collect();
    assert_eq!(got, want);
    assert!(log.iter().zip(0..).all(|(e, i)| {
        e.committed_at_ms == 1_700_000_000_000 + i
            && e.replica == w.document.replica().get()
            && e.byte_size == e.delta_bytes.len() as u64
    }));
    assert_loads(&store, &id, 4, &w.document).await;
    // The old table is gone and the log goes on from 5.
    store
        .append_batch(vec![w.entry(&id, 0)])
        .await
        .expect("append");
    store.close().await;
    assert_eq!(
        ranges(&runs_of(&db, "old").await),
        [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]
    );
    let mut conn = sqlx::SqliteConnection::connect(&db.url)
        .await
        .expect("connect");
    let (tables,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM sqlite_master WHERE name = 'updates'")
            .fetch_one(&mut conn)
            .await
            .expect("catalogue");
    assert_eq!(tables, 0);
    let _ = conn.close().await;
    let store = Store::open(&db.url, StoreConfig::default())
        .await
        .expect("reopen");
    assert_loads(&store, &id, 5, &w.document).await;
    store.close().await;
}

/// A schema-3 database (uncompressed runs and checkpoints) opens with migration 0004 and reads
/// as before; what the store writes from then on is compressed: runs in format 2, checkpoints
/// with `encoding` 1, both read back. A new database returns its free pages when it closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_3_blobs_read_and_new_ones_are_compressed() {
    let db = TestDb::new(Kind::Sqlite).await;
    let old = tempfile::tempdir().expect("temporary directory");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations/sqlite");
    for name in [
        "0001_update_log.sql",
        "0002_journal.sql",
        "0003_update_runs.sql",
    ] {
        std::fs::copy(source.join(name), old.path().join(name)).expect("copy migration");
    }
    let options = db
        .url
        .parse::<sqlx::sqlite::SqliteConnectOptions>()
        .expect("url")
        .create_if_missing(true);
    let mut conn = sqlx::SqliteConnection::connect_with(&options)
        .await
        .expect("connect");
    sqlx::migrate::Migrator::new(old.path())
        .await
        .expect("migrator")
        .run(&mut conn)
        .await
        .expect("schema 3");
    // 300 entries in one format-1 run, and a raw checkpoint at 200.
    let id = doc("old");
    let mut w = Writer::new(5);
    let mut entries = Vec::new();
    let mut at_200 = Vec::new();
    for i in 0..300u32 {
        let delta = w.next_delta(i);
        entries.push(RunCodec {
            hlc: 1_000 + u64::from(i),
            replica: w.document.replica().get(),
            committed_at_ms: 1_700_000_000_000,
            author: None,
            delta: rmp_serde::to_vec_named(&delta).expect("encode"),
        });
        if i == 199 {
            at_200 = w.document.snapshot();
        }
    }
    let bytes: i64 = entries.iter().map(|e| e.delta.len() as i64).sum();
    sqlx::query(
        "INSERT INTO documents (id, created_at_ms, updated_at_ms, head_seq, byte_count, \
         checkpoint_seq) VALUES ('old', 1700000000000, 1700000000000, 300, $1, 200)",
    )
    .bind(bytes)
    .execute(&mut conn)
    .await
    .expect("insert document");
    sqlx::query(
        "INSERT INTO update_runs (doc_id, first_seq, last_seq, entries) VALUES ('old', 1, 300, $1)",
    )
    .bind(RunCodec::encode(&entries))
    .execute(&mut conn)
    .await
    .expect("insert run");
    sqlx::query(
        "INSERT INTO checkpoints (doc_id, seq, created_at_ms, byte_size, snapshot) \
         VALUES ('old', 200, 0, $1, $2)",
    )
    .bind(at_200.len() as i64)
    .bind(&at_200)
    .execute(&mut conn)
    .await
    .expect("insert checkpoint");
    let _ = conn.close().await;

    let store = db.open(manual_checkpoints()).await;
    assert_loads(&store, &id, 300, &w.document).await;
    let log = store.read_log(&id, 1, 1_000).await.expect("read_log");
    assert!(log.iter().map(|e| e.seq).eq(1..=300));
    assert!(
        log.iter()
            .zip(&entries)
            .all(|(got, want)| got.delta_bytes == want.delta && got.hlc == want.hlc)
    );
    let at = store.state_at(&id, 250, SERVER).await.expect("state_at");
    let mut want = lattice_engine::Document::from_snapshot(SERVER, &at_200).expect("snapshot");
    for e in &log[200..250] {
        want.apply(&rmp_serde::from_slice(&e.delta_bytes).expect("delta"))
            .expect("apply");
    }
    assert!(same_content(&at, &want));

    // New entries drain into a compressed run; a new checkpoint is compressed.
    let more: Vec<NewEntry> = (0..300u32).map(|i| w.entry(&id, i)).collect();
    store.append_batch(more).await.expect("append");
    store.drain_journal().await.expect("drain");
    assert_eq!(store.checkpoint_now(&id).await.expect("cp"), Some(600));
    let runs = runs_of(&db, "old").await;
    assert_eq!(ranges(&runs), [(1, 300), (301, 600)]);
    assert_eq!((runs[0].2[0], runs[1].2[0]), (1, 2), "run formats");
    check_runs(&runs);
    let mut conn = sqlx::SqliteConnection::connect(&db.url)
        .await
        .expect("connect");
    let checkpoints: Vec<(i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT seq, encoding, byte_size, length(snapshot) FROM checkpoints \
         WHERE doc_id = 'old' ORDER BY seq",
    )
    .fetch_all(&mut conn)
    .await
    .expect("checkpoints");
    let _ = conn.close().await;
    assert_eq!(checkpoints.len(), 2);
    assert_eq!((checkpoints[0].0, checkpoints[0].1), (200, 0));
    let (seq, encoding, raw, stored) = checkpoints[1];
    assert_eq!((seq, encoding), (600, 1));
    assert!(
        stored < raw,
        "a compressed checkpoint of {raw} bytes stored in {stored}"
    );
    store.close().await;
    let store = Store::open(&db.url, StoreConfig::default())
        .await
        .expect("reopen");
    assert_loads(&store, &id, 600, &w.document).await;
    let at = store.state_at(&id, 250, SERVER).await.expect("state_at");
    assert!(same_content(&at, &want));
    store.close().await;
}

/// A database the store creates vacuums incrementally: the pages the drained journal left
/// free go back to the file system when the store closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_store_keeps_no_free_pages() {
    let db = TestDb::new(Kind::Sqlite).await;
    let store = db.open(manual_checkpoints()).await;
    let mut w = Writer::new(6);
    let id = doc("big");
    for _ in 0..4 {
        let batch: Vec<NewEntry> = (0..2_000u32).map(|i| w.entry(&id, i)).collect();
        store.append_batch(batch).await.expect("append");
    }
    store.close().await;
    let mut conn = sqlx::SqliteConnection::connect(&db.url)
        .await
        .expect("connect");
    let (mode,): (i64,) = sqlx::query_as("PRAGMA auto_vacuum")
        .fetch_one(&mut conn)
        .await
        .expect("auto_vacuum");
    let (free,): (i64,) = sqlx::query_as("PRAGMA freelist_count")
        .fetch_one(&mut conn)
        .await
        .expect("freelist");
    let _ = conn.close().await;
    assert_eq!(
        (mode, free),
        (2, 0),
        "auto_vacuum = INCREMENTAL, no free page"
    );
    let store = Store::open(&db.url, StoreConfig::default())
        .await
        .expect("reopen");
    assert_loads(&store, &id, 8_000, &w.document).await;
    store.close().await;
}
