//! The store contract: every backend passes the same tests. Each test is written once as an
//! `async fn(Kind)` and instantiated for SQLite and Postgres by `contract_tests!`. Postgres
//! needs `LATTICE_TEST_POSTGRES_URL` (set by `cargo xtask test`); without it those tests fail.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use lattice_engine::{Document, ReplicaId};
use lattice_server::store::{AppendError, OpenError, Page, ReadError, Retention, StoreConfig};
use lattice_tests::store_support::{
    Kind, TestDb, Writer, assert_loads, doc, manual_checkpoints, same_content,
};

const SERVER: ReplicaId = ReplicaId::from_random(0x5e11);

async fn append_load_roundtrip(kind: Kind) {
    let db = TestDb::new(kind).await;
    let store = db.open(StoreConfig::default()).await;
    let id = doc("notes/a");
    assert!(store.load(&id, SERVER).await.expect("load").is_none());
    let mut w = Writer::new(7);
    for i in 0..40u32 {
        let seq = store.append(w.entry(&id, i * 13)).await.expect("append");
        assert_eq!(seq, u64::from(i) + 1);
    }
    let loaded = store
        .load(&id, SERVER)
        .await
        .expect("load")
        .expect("exists");
    assert_eq!(loaded.head_seq, 40);
    assert_eq!(loaded.meta.head_seq, 40);
    assert_eq!(loaded.document.replica(), SERVER);
    assert!(same_content(&loaded.document, &w.document));
    let meta = store.document(&id).await.expect("meta").expect("exists");
    assert!(meta.byte_count > 0 && meta.deleted_at_ms.is_none());
    assert!(meta.created_at_ms <= meta.updated_at_ms);

    // Everything survives closing and reopening.
    store.close().await;
    let store = db.open(StoreConfig::default()).await;
    assert_loads(&store, &id, 40, &w.document).await;
    store.close().await;
    db.cleanup().await;
}

async fn batch_spans_documents(kind: Kind) {
    let db = TestDb::new(kind).await;
    let store = db.open(StoreConfig::default()).await;
    let (a, b) = (doc("batch/a"), doc("batch/b"));
    let mut w = Writer::new(3);
    let first = store.append(w.entry(&a, 0)).await.expect("append");
    assert_eq!(first, 1);
    let entries = vec![
        w.entry(&a, 1),
        w.entry(&b, 2),
        w.entry(&a, 3),
        w.entry(&b, 4),
    ];
    let seqs = store.append_batch(entries).await.expect("batch");
    assert_eq!(seqs, vec![2, 1, 3, 2]);
    assert_eq!(store.read_log(&a, 1, 100).await.expect("log").len(), 3);
    assert_eq!(store.read_log(&b, 1, 100).await.expect("log").len(), 2);
    assert!(
        store
            .append_batch(Vec::new())
            .await
            .expect("empty")
            .is_empty()
    );
    store.close().await;
    db.cleanup().await;
}

async fn concurrent_appends_are_dense(kind: Kind) {
    let db = TestDb::new(kind).await;
    let store = db
        .open(StoreConfig {
            checkpoint_every_updates: 25,
            ..StoreConfig::default()
        })
        .await;
    let docs: Vec<_> = (0..4).map(|i| doc(&format!("dense/{i}"))).collect();
    let mut tasks = Vec::new();
    for t in 0..40u32 {
        let store = store.clone();
        let id = docs[t as usize % docs.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut w = Writer::new(100 + t);
            let mut seqs = Vec::new();
            for i in 0..15u32 {
                seqs.push(store.append(w.entry(&id, i * 5 + 5)).await.expect("append"));
            }
            (id, seqs)
        }));
    }
    let mut per_doc: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for t in tasks {
        let (id, seqs) = t.await.expect("task");
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "one task's seqs increase"
        );
        let set = per_doc.entry(id.to_string()).or_default();
        for s in seqs {
            assert!(set.insert(s), "seq {s} handed out twice in {id}");
        }
    }
    for (id, seqs) in per_doc {
        let n = seqs.len() as u64;
        assert_eq!(seqs, (1..=n).collect(), "{id} is dense");
        let id = doc(&id);
        let log = store.read_log(&id, 1, 10_000).await.expect("log");
        assert_eq!(log.len() as u64, n);
        assert!(store.load(&id, SERVER).await.expect("load").is_some());
    }
    store.close().await;
    db.cleanup().await;
}

async fn read_log_ranges_and_metadata(kind: Kind) {
    let db = TestDb::new(kind).await;
    let store = db.open(StoreConfig::default()).await;
    let id = doc("log");
    let mut w = Writer::new(9);
    let mut entries = Vec::new();
    for i in 0..10u32 {
        let mut e = w.entry(&id, i);
        e.hlc = u64::MAX - u64::from(i);
        e.author = (i % 2 == 0).then(|| format!("user-{i}"));
        entries.push(e);
    }
    let before = lattice_server_now_ms();
    store.append_batch(entries.clone()).await.expect("append");
    let log = store.read_log(&id, 4, 3).await.expect("log");
    assert_eq!(log.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![4, 5, 6]);
    for e in &log {
        let sent = &entries[(e.seq - 1) as usize];
        assert_eq!(e.hlc, sent.hlc, "the full 64-bit HLC survives");
        assert_eq!(e.replica, 9);
        assert_eq!(e.author, sent.author);
        assert_eq!(e.delta_bytes, sent.delta_bytes());
        assert_eq!(e.byte_size, sent.delta_bytes().len() as u64);
        assert!(e.committed_at_ms >= before);
        e.delta(&id).expect("decodes");
    }
    assert!(store.read_log(&id, 11, 10).await.expect("log").is_empty());
    assert_eq!(store.read_log(&id, 0, 100).await.expect("log").len(), 10);
    assert!(matches!(
        store.read_log(&doc("nope"), 1, 10).await,
        Err(ReadError::NotFound { .. })
    ));
    store.close().await;
    db.cleanup().await;
}

fn lattice_server_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn background_checkpoints_bound_the_replay(kind: Kind) {
    let db = TestDb::new(kind).await;
    let config = StoreConfig {
        checkpoint_every_updates: 10,
        ..StoreConfig::default()
    };
    let store = db.open(config.clone()).await;
    let id = doc("cp");
    let mut w = Writer::new(5);
    for i in 0..35u32 {
        store.append(w.entry(&id, i)).await.expect("append");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let meta = store.document(&id).await.expect("meta").expect("exists");
        // Once writes stop, the newest checkpoint is less than one interval behind the head.
        if meta.checkpoint_seq > 0 && meta.head_seq - meta.checkpoint_seq < 10 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no checkpoint: {meta:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Loading uses the checkpoint: even with the log before it unreadable, it loads.
    let loaded = store
        .load(&id, SERVER)
        .await
        .expect("load")
        .expect("exists");
    assert!(same_content(&loaded.document, &w.document));
    let cp = loaded.meta.checkpoint_seq;
    // Edit the log table itself: on SQLite the entries may still be in the journal.
    store.drain_journal().await.expect("drain");
    assert_eq!(db.corrupt_deltas("cp", 1..=cp, &[0xc1]).await, cp);
    assert_loads(&store, &id, 35, &w.document).await;
    // The background checkpointer may reach the head on its own (a trigger at 10 can load the
    // document at 35): then there is nothing left for `checkpoint_now` to do.
    let forced = store.checkpoint_now(&id).await.expect("checkpoint");
    assert!(matches!(forced, Some(35) | None), "{forced:?}");
    let meta = store.document(&id).await.expect("meta").expect("exists");
    assert_eq!(meta.checkpoint_seq, 35);
    assert_eq!(store.checkpoint_now(&id).await.expect("checkpoint"), None);
    store.close().await;
    db.cleanup().await;
}

async fn corrupt_delta_is_a_typed_error(kind: Kind) {
    let db = TestDb::new(kind).await;
    let store = db.open(manual_checkpoints()).await;
    let (bad, bad_yjs, good) = (doc("bad"), doc("bad-yjs"), doc("good"));
    let mut w = Writer::new(2);
    for i in 0..5u32 {
        store.append(w.entry(&bad, 0)).await.expect("append");
        store.append(w.entry(&bad_yjs, 0)).await.expect("append");
        store.append(w.entry(&good, i)).await.expect("append");
    }
    // An older bug stored garbage at seq 3 of `bad`, and a well-formed delta with broken Yjs
    // bytes at seq 4 of `bad-yjs` (in the log table itself, so the SQLite journal is drained).
    store.drain_journal().await.expect("drain");
    let garbage = [0xde, 0xad, 0xbe, 0xef, 0x00, 0xff];
    assert_eq!(db.corrupt_deltas("bad", 3..=3, &garbage).await, 1);
    let broken = lattice_engine::Delta {
        yjs: vec![0xff; 12],
        ..Default::default()
    };
    let broken = rmp_serde::to_vec_named(&broken).expect("encode");
    assert_eq!(db.corrupt_deltas("bad-yjs", 4..=4, &broken).await, 1);

    match store.load(&bad, SERVER).await {
        Err(ReadError::CorruptDelta {
            doc: d,
            seq,
            damage,
        }) => {
            assert_eq!((d.as_str(), seq), ("bad", 3));
            assert!(!damage.to_string().is_empty());
        }
        other => panic!("expected CorruptDelta for bad@3, got {other:?}"),
    }
    let err = store.load(&bad_yjs, SERVER).await.expect_err("corrupt");
    assert!(
        matches!(&err, ReadError::CorruptDelta { doc: d, seq: 4, .. } if d.as_str() == "bad-yjs"),
        "{err:?}"
    );
    assert!(err.to_string().contains("bad-yjs") && err.to_string().contains('4'));
    // Other documents still load, and so does the corrupt one's history before the damage.
    let loaded = store
        .load(&good, SERVER)
        .await
        .expect("load")
        .expect("exists");
    assert_eq!(loaded.head_seq, 5);
    store
        .state_at(&bad, 2, SERVER)
        .await
        .expect("before the damage");
    assert!(matches!(
        store.state_at(&bad, 3, SERVER).await,
        Err(ReadError::CorruptDelta { seq: 3, .. })
    ));
    // A checkpoint cannot be written past the damage either; the error says where.
    assert!(matches!(
        store.checkpoint_now(&bad).await,
        Err(ReadError::CorruptDelta { seq: 3, .. })
    ));
    store.close().await;
    db.cleanup().await;
}

async fn soft_delete_and_undelete(kind: Kind) {
    let db = TestDb::new(kind).await;
    let store = db.open(StoreConfig::default()).await;
    let (gone, kept) = (doc("del/gone"), doc("del/kept"));
    let mut w = Writer::new(4);
    store.append(w.entry(&gone, 0)).await.expect("append");
    store.append(w.entry(&kept, 0)).await.expect("append");
    assert!(store.soft_delete(&gone).await.expect("delete"));
    assert!(!store.soft_delete(&gone).await.expect("delete twice"));
    assert!(!store.soft_delete(&doc("del/never")).await.expect("delete"));
    assert!(matches!(
        store.load(&gone, SERVER).await,
        Err(ReadError::DocumentDeleted { .. })
    ));
    // Appends to the deleted document fail; appends committed alongside them do not.
    let (r1, r2) = tokio::join!(
        store.append(w.entry(&gone, 1)),
        store.append(w.entry(&kept, 1))
    );
    assert!(matches!(r1, Err(AppendError::DocumentDeleted { doc: d }) if d == gone));
    assert_eq!(r2.expect("kept"), 2);
    let batch = store
        .append_batch(vec![w.entry(&kept, 2), w.entry(&gone, 2)])
        .await;
    assert!(matches!(batch, Err(AppendError::DocumentDeleted { .. })));
    assert_eq!(
        store
            .document(&kept)
            .await
            .expect("meta")
            .expect("x")
            .head_seq,
        2
    );
    // History stays readable for admins.
    assert_eq!(store.read_log(&gone, 1, 10).await.expect("log").len(), 1);
    store.state_at(&gone, 1, SERVER).await.expect("history");
    let meta = store.document(&gone).await.expect("meta").expect("exists");
    assert!(meta.is_deleted() && meta.head_seq == 1);

    assert!(store.undelete(&gone).await.expect("undelete"));
    assert!(!store.undelete(&gone).await.expect("undelete twice"));
    assert_eq!(store.append(w.entry(&gone, 3)).await.expect("append"), 2);
    assert!(store.load(&gone, SERVER).await.expect("load").is_some());
    store.close().await;
    db.cleanup().await;
}

async fn list_documents_by_prefix(kind: Kind) {
    let db = TestDb::new(kind).await;
    let store = db.open(StoreConfig::default()).await;
    let mut w = Writer::new(6);
    for name in [
        "team-a/x", "team-a/y", "team-a/z", "team-b/x", "team-a", "Team-a/q",
    ] {
        store.append(w.entry(&doc(name), 0)).await.expect("append");
    }
    store
        .append(w.entry(&doc("team-a/y"), 0))
        .await
        .expect("append");
    store.soft_delete(&doc("team-a/z")).await.expect("delete");

    let all = store
        .list_documents(
            "",
            &Page {
                after: None,
                limit: 100,
            },
        )
        .await
        .expect("list");
    let ids: Vec<_> = all.iter().map(|m| m.id.to_string()).collect();
    assert_eq!(
        ids,
        [
            "Team-a/q", "team-a", "team-a/x", "team-a/y", "team-a/z", "team-b/x"
        ]
    );

    let page1 = store
        .list_documents(
            "team-a/",
            &Page {
                after: None,
                limit: 2,
            },
        )
        .await
        .expect("list");
    assert_eq!(
        page1.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        ["team-a/x", "team-a/y"]
    );
    assert_eq!(page1[1].head_seq, 2);
    assert!(page1[1].byte_count > page1[0].byte_count);
    let page2 = store
        .list_documents(
            "team-a/",
            &Page {
                after: Some(page1[1].id.clone()),
                limit: 2,
            },
        )
        .await
        .expect("list");
    assert_eq!(page2.len(), 1);
    assert_eq!(page2[0].id.as_str(), "team-a/z");
    assert!(page2[0].is_deleted());
    store.close().await;
    db.cleanup().await;
}

async fn retention_keeps_a_checkpoint_at_the_cut(kind: Kind) {
    let db = TestDb::new(kind).await;
    let config = StoreConfig {
        retention: Retention::DropBeforeCheckpoint { keep_updates: 5 },
        checkpoints_kept: 1,
        ..manual_checkpoints()
    };
    let store = db.open(config).await;
    let id = doc("ret");
    let mut w = Writer::new(8);
    let mut at_20 = None;
    for i in 0..30u32 {
        store.append(w.entry(&id, i)).await.expect("append");
        if i == 19 {
            assert_eq!(store.checkpoint_now(&id).await.expect("cp"), Some(20));
            at_20 = Some(w.document.to_json());
        }
    }
    // No checkpoint at or below 30 - 5 other than 20: the cut lands there.
    assert_eq!(store.checkpoint_now(&id).await.expect("cp"), Some(30));
    let meta = store.document(&id).await.expect("meta").expect("exists");
    assert_eq!(meta.log_start_seq, 20);
    assert!(matches!(
        store.read_log(&id, 20, 10).await,
        Err(ReadError::Truncated {
            log_start_seq: 20,
            ..
        })
    ));
    assert_eq!(store.read_log(&id, 21, 100).await.expect("log").len(), 10);
    let s20 = store
        .state_at(&id, 20, SERVER)
        .await
        .expect("state at the cut");
    assert_eq!(Some(s20.to_json()), at_20);
    store
        .state_at(&id, 25, SERVER)
        .await
        .expect("after the cut");
    assert!(matches!(
        store.state_at(&id, 19, SERVER).await,
        Err(ReadError::Truncated { .. })
    ));
    let loaded = store
        .load(&id, SERVER)
        .await
        .expect("load")
        .expect("exists");
    assert!(same_content(&loaded.document, &w.document));
    store.close().await;
    db.cleanup().await;
}

/// Old checkpoints are thinned to one per `history_checkpoint_every_updates` span (the oldest
/// in each), besides the newest `checkpoints_kept`: `state_at` at an old version replays from
/// the span's checkpoint, not from the start. Which checkpoints exist is observed through the
/// log: entries 11..=19 are made unreadable, so `state_at` works exactly where a kept
/// checkpoint spares it from replaying them.
async fn history_checkpoints_are_thinned_per_span(kind: Kind) {
    let db = TestDb::new(kind).await;
    let config = StoreConfig {
        checkpoints_kept: 1,
        history_checkpoint_every_updates: 10,
        ..manual_checkpoints()
    };
    let store = db.open(config).await;
    let id = doc("thin");
    let mut w = Writer::new(9);
    let mut at_20 = None;
    for i in 0..50u32 {
        store.append(w.entry(&id, i)).await.expect("append");
        if (i + 1) % 5 == 0 {
            assert_eq!(
                store.checkpoint_now(&id).await.expect("cp"),
                Some(u64::from(i) + 1)
            );
        }
        if i == 19 {
            at_20 = Some(w.document.to_json());
        }
    }
    // Kept: 5 (oldest of span 0), 10, 20, 30, 40 (oldest of theirs) and 50 (newest).
    store.drain_journal().await.expect("drain");
    assert_eq!(db.corrupt_deltas("thin", 11..=19, &[0xc1]).await, 9);
    let s20 = store
        .state_at(&id, 20, SERVER)
        .await
        .expect("checkpoint 20 kept");
    assert_eq!(Some(s20.to_json()), at_20);
    store
        .state_at(&id, 10, SERVER)
        .await
        .expect("checkpoint 10 kept");
    store
        .state_at(&id, 37, SERVER)
        .await
        .expect("from checkpoint 30");
    assert!(
        matches!(
            store.state_at(&id, 16, SERVER).await,
            Err(ReadError::CorruptDelta { seq: 11, .. })
        ),
        "checkpoint 15 was thinned away"
    );
    store.close().await;
    db.cleanup().await;
}

async fn state_at_bounds(kind: Kind) {
    let db = TestDb::new(kind).await;
    let store = db.open(StoreConfig::default()).await;
    let id = doc("bounds");
    let mut w = Writer::new(1);
    for i in 0..3u32 {
        store.append(w.entry(&id, i)).await.expect("append");
    }
    let empty = store.state_at(&id, 0, SERVER).await.expect("empty");
    assert!(same_content(&empty, &Document::new(SERVER)));
    assert!(matches!(
        store.state_at(&id, 4, SERVER).await,
        Err(ReadError::SeqOutOfRange {
            seq: 4,
            head: 3,
            ..
        })
    ));
    assert!(matches!(
        store.state_at(&doc("missing"), 1, SERVER).await,
        Err(ReadError::NotFound { .. })
    ));
    store.close().await;
    db.cleanup().await;
}

/// SQLite journals appends and drains them into the log in slices, between group commits (see
/// `server/src/store/sqlite/`). With a tiny journal and tiny slices, drains run all the time
/// while writers append and readers read: every read sees every append that was reported
/// committed before it started, with no gap and nothing twice; a soft delete and a forced
/// checkpoint of journaled documents change nothing of that; and it all survives a reopen. On
/// Postgres (no journal) the same must hold.
async fn reads_stay_whole_while_the_journal_drains(kind: Kind) {
    use std::sync::{Arc, Mutex};
    let db = TestDb::new(kind).await;
    let config = StoreConfig {
        journal_max_entries: 8,
        journal_slice_entries: 3,
        journal_max_age: Duration::from_millis(2),
        checkpoint_every_updates: 7,
        ..StoreConfig::default()
    };
    let store = db.open(config.clone()).await;
    let docs: Vec<_> = (0..6).map(|i| doc(&format!("journal/{i}"))).collect();
    // Per document: the highest sequence number reported committed so far.
    let committed: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let mut writers = Vec::new();
    for t in 0..12u32 {
        let (store, committed) = (store.clone(), committed.clone());
        let id = docs[t as usize % docs.len()].clone();
        writers.push(tokio::spawn(async move {
            let mut w = Writer::new(500 + t);
            for i in 0..30u32 {
                let seq = match store.append(w.entry(&id, i)).await {
                    Ok(seq) => seq,
                    // Refused while the reader has the document soft-deleted: not in the log.
                    Err(AppendError::DocumentDeleted { .. }) => continue,
                    Err(e) => panic!("append: {e}"),
                };
                let mut c = committed.lock().expect("committed");
                let max = c.entry(id.to_string()).or_default();
                *max = (*max).max(seq);
            }
        }));
    }
    let reader = {
        let (store, committed, docs) = (store.clone(), committed.clone(), docs.clone());
        tokio::spawn(async move {
            let mut reads = 0u32;
            for round in 0..40u32 {
                for id in &docs {
                    let floor = committed
                        .lock()
                        .expect("committed")
                        .get(id.as_str())
                        .copied()
                        .unwrap_or(0);
                    let log = match store.read_log(id, 1, u32::MAX).await {
                        Ok(log) => log,
                        Err(ReadError::NotFound { .. }) if floor == 0 => continue,
                        Err(e) => panic!("read_log {id}: {e}"),
                    };
                    let seqs: Vec<u64> = log.iter().map(|e| e.seq).collect();
                    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "{id}");
                    assert!(seqs.len() as u64 >= floor, "{id}: {} < {floor}", seqs.len());
                    let meta = store.document(id).await.expect("meta");
                    assert!(meta.map_or(0, |m| m.head_seq) >= floor, "{id} meta");
                    if let Some(loaded) = store.load(id, SERVER).await.expect("load") {
                        assert!(loaded.head_seq >= floor, "{id} load");
                    }
                    reads += 1;
                }
                if round == 10 {
                    // A soft delete and undelete of a document that has journaled entries.
                    assert!(store.soft_delete(&docs[0]).await.expect("delete"));
                    assert!(store.undelete(&docs[0]).await.expect("undelete"));
                    store.checkpoint_now(&docs[1]).await.expect("checkpoint");
                }
                tokio::task::yield_now().await;
            }
            reads
        })
    };
    for w in writers {
        w.await.expect("writer");
    }
    assert!(reader.await.expect("reader") > 0);

    // Appends refused while a document was deleted are not in its log; everything else is.
    let total: u64 = committed.lock().expect("committed").values().sum();
    assert!(total > 0);
    let check = |store: lattice_server::store::Store, docs: Vec<lattice_engine::DocId>| async move {
        let mut sum = 0;
        for id in &docs {
            let meta = store.document(id).await.expect("meta").expect("exists");
            let log = store.read_log(id, 1, u32::MAX).await.expect("read_log");
            let seqs: Vec<u64> = log.iter().map(|e| e.seq).collect();
            assert_eq!(seqs, (1..=meta.head_seq).collect::<Vec<_>>(), "{id}");
            let loaded = store.load(id, SERVER).await.expect("load").expect("exists");
            let replayed = store
                .state_at(id, meta.head_seq, SERVER)
                .await
                .expect("state_at");
            assert!(same_content(&loaded.document, &replayed), "{id}");
            assert_eq!(
                meta.byte_count,
                log.iter().map(|e| e.byte_size).sum::<u64>(),
                "{id} byte count"
            );
            sum += meta.head_seq;
        }
        sum
    };
    let before = check(store.clone(), docs.clone()).await;
    assert_eq!(before, total, "every committed append is in the log once");
    store.close().await;
    let store = db.open(config).await;
    assert_eq!(check(store.clone(), docs.clone()).await, before);
    store.close().await;
    db.cleanup().await;
}

/// Two stores on one database, as two server processes (or a server and an admin tool) would
/// have: each sees the other's appends, numbering stays dense, and on SQLite the second store's
/// open drains the first one's journal under its feet without losing or doubling anything.
async fn two_stores_share_one_database(kind: Kind) {
    let db = TestDb::new(kind).await;
    let config = StoreConfig {
        journal_max_age: Duration::from_secs(30),
        ..StoreConfig::default()
    };
    let a = db.open(config.clone()).await;
    let id = doc("shared/one");
    let mut w = Writer::new(11);
    for i in 0..20u32 {
        assert_eq!(
            a.append(w.entry(&id, i)).await.expect("append a"),
            u64::from(i) + 1
        );
    }
    let b = db.open(config).await;
    for i in 20..30u32 {
        assert_eq!(
            b.append(w.entry(&id, i)).await.expect("append b"),
            u64::from(i) + 1
        );
    }
    for i in 30..40u32 {
        assert_eq!(
            a.append(w.entry(&id, i)).await.expect("append a"),
            u64::from(i) + 1
        );
    }
    for store in [&a, &b] {
        store.drain_journal().await.expect("drain");
    }
    for store in [&a, &b] {
        let log = store.read_log(&id, 1, u32::MAX).await.expect("read_log");
        let seqs: Vec<u64> = log.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=40).collect::<Vec<_>>());
        assert_loads(store, &id, 40, &w.document).await;
    }
    a.close().await;
    b.close().await;
    db.cleanup().await;
}

async fn schema_too_new_is_refused(kind: Kind) {
    let db = TestDb::new(kind).await;
    let store = db.open(StoreConfig::default()).await;
    store.close().await;
    let checksum = vec![0u8; 48];
    db.execute(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from the future', TRUE, $1, 0)",
        Some(checksum),
    )
    .await;
    match lattice_server::store::Store::open(&db.url, StoreConfig::default()).await {
        Err(
            e @ OpenError::SchemaTooNew {
                found: 9999,
                known: 5,
            },
        ) => {
            assert!(e.to_string().contains("newer than this build"), "{e}");
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    db.cleanup().await;
}

/// State at `s` equals applying deltas 1..=s in order, for random histories and random `s`.
/// 64 cases per backend: each case writes a fresh document of up to 60 updates with
/// checkpoints every 7 (so both the checkpoint and the replay path are hit) and checks 4 random
/// `s`; that is ~256 comparisons per backend in a few seconds, where IO, not case count, is the
/// cost.
fn state_at_matches_replay(kind: Kind) {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let db = rt.block_on(TestDb::new(kind));
    let store = rt.block_on(db.open(StoreConfig {
        checkpoint_every_updates: 7,
        ..StoreConfig::default()
    }));
    let mut runner = TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    });
    let case = std::sync::atomic::AtomicU32::new(0);
    let strategy = (
        prop::collection::vec((any::<u32>(), 1u32..4), 1..60),
        prop::collection::vec(any::<prop::sample::Index>(), 4),
    );
    let result = runner.run(&strategy, |(ops, picks)| {
        let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = doc(&format!("prop/{n}"));
        let mut writers: Vec<Writer> = (1..4).map(Writer::new).collect();
        let mut deltas = Vec::new();
        let mut entries = Vec::new();
        for (choice, who) in &ops {
            let w = &mut writers[*who as usize - 1];
            let delta = w.next_delta(*choice);
            entries.push(lattice_server::store::NewEntry::new(
                id.clone(),
                &delta,
                0,
                w.document.replica(),
                None,
            ));
            deltas.push(delta);
        }
        rt.block_on(async {
            // Appended in a few batches so checkpoints fall between and inside them.
            for chunk in entries.chunks(9) {
                store.append_batch(chunk.to_vec()).await.expect("append");
            }
            for pick in &picks {
                let s = pick.index(deltas.len() + 1);
                let got = store
                    .state_at(&id, s as u64, SERVER)
                    .await
                    .expect("state_at");
                let mut want = Document::new(SERVER);
                for d in &deltas[..s] {
                    want.apply(d).expect("apply");
                }
                prop_assert!(
                    same_content(&got, &want),
                    "state at {} of {}",
                    s,
                    deltas.len()
                );
            }
            Ok(())
        })
    });
    rt.block_on(async {
        store.close().await;
        db.cleanup().await;
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

macro_rules! contract_tests {
    ($kind:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name($kind).await
            }
        )*
        #[test]
        fn state_at_matches_replay() {
            super::state_at_matches_replay($kind)
        }
    };
}

macro_rules! contract {
    ($kind:expr) => {
        contract_tests!(
            $kind;
            append_load_roundtrip,
            batch_spans_documents,
            concurrent_appends_are_dense,
            read_log_ranges_and_metadata,
            background_checkpoints_bound_the_replay,
            corrupt_delta_is_a_typed_error,
            soft_delete_and_undelete,
            list_documents_by_prefix,
            retention_keeps_a_checkpoint_at_the_cut,
            history_checkpoints_are_thinned_per_span,
            state_at_bounds,
            schema_too_new_is_refused,
            reads_stay_whole_while_the_journal_drains,
            two_stores_share_one_database,
        );
    };
}

mod sqlite {
    use super::*;
    contract!(Kind::Sqlite);
}

mod postgres {
    use super::*;
    contract!(Kind::Postgres);
}
