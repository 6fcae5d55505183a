//! Relay before commit (docs/protocol.md, "Relay and acknowledgement"): a delta reaches the
//! other connections once the room has applied it; its ack waits for the commit. A server
//! killed between the two loses nothing it acknowledged, and what it relayed but never
//! committed comes back into its log through the resync of a reader that got it, even when its
//! sender never returns.
//!
//! The server reaches PostgreSQL through a TCP proxy of the test's own: `stall` holds every
//! byte, so commits hang while relays flow; `down` then drops what it held, so PostgreSQL rolls
//! the open transaction back, as if the server died before its `COMMIT` left.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lattice_engine::DocId;
use lattice_server::client::Client;
use lattice_server::store::StoreConfig;
use lattice_tests::cluster_support::cluster_client;
use lattice_tests::proxy::{TcpProxy as Proxy, through};
use lattice_tests::server_support::{ChildServer, doc, settled};
use lattice_tests::store_support::{Kind, TestDb};
use tokio::sync::Mutex;

/// One writer's markers, in the order typed.
type Typed = Arc<Mutex<Vec<String>>>;

/// Appends `marker` to the text `t`.
async fn append(c: &Client, d: &DocId, marker: &str) {
    let m = marker.to_owned();
    c.edit(d, move |doc, _| {
        let at = doc.text_len("t");
        doc.text_insert("t", at, &m)
    })
    .await
    .expect("edit");
}

fn markers(text: &str) -> BTreeSet<String> {
    text.split(';')
        .filter(|m| !m.is_empty())
        .map(|m| format!("{m};"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_relay_and_commit_the_server_loses_nothing_acked_and_readers_bring_back_the_rest()
 {
    let db = TestDb::new(Kind::Postgres).await;
    let (_, upstream) = through(&db.url, "127.0.0.1:1".parse().expect("addr"));
    let database = Proxy::start(upstream).await;
    let (db_url, _) = through(&db.url, database.addr);
    let server = ChildServer::spawn(&db_url, &[]).await;
    // Clients reach the server through a proxy too, retargeted to the restarted process.
    let front = Proxy::start(server.addr).await;
    let url = format!("ws://{}/v1/sync", front.addr);
    let d = doc("relay-crash");

    let writers: Vec<Client> = (0..3).map(|i| cluster_client(&url, 30 + i)).collect();
    let reader = cluster_client(&url, 40);
    for c in writers.iter().chain([&reader]) {
        c.open(&d, Vec::new()).await.expect("open");
        settled(c, &d).await;
    }

    // Three writers type under load; after a while every commit hangs, relays do not.
    let typing = Arc::new(AtomicBool::new(true));
    let mut tasks = Vec::new();
    let mut typed: Vec<Typed> = Vec::new();
    for (i, w) in writers.iter().enumerate() {
        let (w, d, typing) = (w.clone(), d.clone(), typing.clone());
        let log: Typed = Arc::default();
        typed.push(log.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while typing.load(Ordering::Relaxed) {
                let marker = format!("w{i}:{n};");
                log.lock().await.push(marker.clone());
                append(&w, &d, &marker).await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    database.stall();
    tokio::time::sleep(Duration::from_millis(400)).await;
    typing.store(false, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("writer");
    }
    // The writers go away for good: what they did not get acknowledged, only the reader has.
    let mut acked: BTreeSet<String> = BTreeSet::new();
    let mut unacked: BTreeSet<String> = BTreeSet::new();
    for (w, log) in writers.iter().zip(&typed) {
        w.stop();
        let log = log.lock().await;
        // Acks are cumulative: the pending deltas are the last ones typed.
        let done = log.len() - w.pending(&d);
        acked.extend(log[..done].iter().cloned());
        unacked.extend(log[done..].iter().cloned());
    }
    assert!(
        !acked.is_empty(),
        "nothing was acknowledged before the stall"
    );
    // Relayed while the commits hung.
    let relayed_only: BTreeSet<String> = {
        let held = |r: &Client| markers(&r.read(&d, |x| x.text("t")).expect("text"));
        let waited = reader
            .wait_until(Duration::from_secs(10), |s| {
                s.document(&d)
                    .is_some_and(|x| markers(&x.text("t")).iter().any(|m| unacked.contains(m)))
            })
            .await;
        assert!(
            waited,
            "no unacknowledged delta reached the reader: relays waited for the commit"
        );
        held(&reader).intersection(&unacked).cloned().collect()
    };
    let reader_held = markers(&reader.read(&d, |x| x.text("t")).expect("text"));
    eprintln!(
        "{} markers acknowledged, {} not; the reader held {} of those",
        acked.len(),
        unacked.len(),
        relayed_only.len()
    );

    server.kill9().await;
    // What the proxy held (the hung commit) never reaches PostgreSQL: it rolls back.
    database.down();
    database.unstall();
    database.up().await;
    let server = ChildServer::spawn(&db_url, &[]).await;
    front.retarget(server.addr);

    // The reader reconnects and resyncs: its resync carries the writers' lost deltas, and it
    // is settled only once the server has acknowledged that resync delta (it has no edit of
    // its own pending, so `pending` alone would say 0 before the delta is committed).
    assert!(
        reader
            .wait_until(Duration::from_secs(20), |s| s.is_settled(&d))
            .await,
        "the reader did not resync"
    );
    let store = db.open(StoreConfig::default()).await;
    let stored = store
        .load(&d, lattice_engine::ReplicaId::new(99).expect("replica"))
        .await
        .expect("load")
        .expect("stored");
    let text = markers(&stored.document.text("t"));
    let lost: Vec<&String> = acked.difference(&text).collect();
    assert!(lost.is_empty(), "acknowledged and lost: {lost:?}");
    let missing: Vec<&String> = reader_held.difference(&text).collect();
    assert!(
        missing.is_empty(),
        "held by the reader but not in the log after its resync: {missing:?}"
    );
    assert!(
        relayed_only.is_subset(&text),
        "{} relayed-only markers came back",
        relayed_only.len()
    );
    reader.stop();
    let status = server.terminate().await;
    assert!(status.success(), "SIGTERM gives a clean exit");
    database.down();
    db.cleanup().await;
}
