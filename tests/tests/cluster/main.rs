//! The cluster (docs/cluster.md) end to end: three `lattice serve` processes on one PostgreSQL
//! database and one Redis, each a node that serves any document. Native clients, a raw
//! y-websocket peer and HTTP readers spread over the nodes must converge and see every entry
//! exactly once whatever happens to a node (SIGKILL), to Redis (restart, `CLIENT KILL`, a
//! trimmed stream) or to PostgreSQL (an outage); a node loads a document only for its own
//! subscribers, and a room loaded while other nodes write misses nothing; presence, soft delete and restore cross nodes.
//!
//! Every test runs against a real PostgreSQL (`LATTICE_TEST_POSTGRES_URL`) and a real
//! `redis-server` (`LATTICE_TEST_REDIS_SERVER`, else on `PATH`) and never skips. Edits carry
//! unique markers (`<tag.n>`) so that what was acknowledged can be found in the store.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lattice_engine::protocol::{ClientMsg, ServerMsg};
use lattice_engine::sync::SessionEvent;
use lattice_engine::yws::{self, YMessage};
use lattice_engine::{Delta, DocId, DocState, Document, ReplicaId, Value};
use lattice_server::client::Client;
use lattice_tests::cluster_support::{
    Cluster, ClusterOptions, SeqReader, TcpProxy, cluster_client, whole_log,
};
use lattice_tests::http_support::Sse;
use lattice_tests::server_support::{
    RawPeer, Read, WAIT, YjsPeer, YjsRead, doc, http_get, http_post, lattice_binary, settled,
};
use tokio_tungstenite::tungstenite::Message;

/// The text every test edits.
const TEXT: &str = "t";
/// A writer makes no new edit while this many of its edits are unacknowledged.
const MAX_PENDING: usize = 32;
/// Waits that span an outage and the clients' reconnect backoff.
const LONG_WAIT: Duration = Duration::from_secs(60);

mod faults;
mod joins;
mod presence;
mod writers;

use presence::*;
use writers::*;

/// Native clients on all three nodes (and a stock Yjs peer on one) converge on one document;
/// presence set on each node reaches the clients on the other two and is kept alive across
/// nodes by renewals; a SIGKILLed node's client leaves the others' presence within the TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_on_three_nodes_converge_and_share_presence_until_a_node_dies() {
    let mut cluster = Cluster::start().await;
    let ttl = Duration::from_secs(ClusterOptions::default().presence_ttl_secs);
    for i in 0..3 {
        let line = cluster.cluster_line(i).await;
        assert!(
            line.contains(&cluster.redis.url()),
            "node {i} says it fans out through {line:?}, not the test's Redis"
        );
    }

    let d = doc("shared");
    let clients: Vec<Client> = (0..3)
        .map(|i| cluster_client(&cluster.ws_url(i), 100 + i as u32))
        .collect();
    let views: Vec<PresenceView> = clients.iter().map(|c| PresenceView::watch(c, &d)).collect();
    for c in &clients {
        c.open(&d, Vec::new()).await.expect("open");
        settled(c, &d).await;
    }
    let yjs = YjsMirror::join(cluster.addr(0), "shared", 900, &marker("yjs", 0)).await;

    // Concurrent inserts from every node.
    let mut tasks = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let (c, d) = (c.clone(), d.clone());
        tasks.push(tokio::spawn(async move {
            for k in 0..20 {
                let m = marker(&format!("n{i}"), k);
                c.edit(&d, |x, _| x.text_insert(TEXT, 0, &m))
                    .await
                    .expect("edit");
            }
        }));
    }
    for t in tasks {
        t.await.expect("editor");
    }
    let mut markers: Vec<String> = (0..3)
        .flat_map(|i| (0..20).map(move |k| marker(&format!("n{i}"), k)))
        .collect();
    markers.push(marker("yjs", 0));
    let refs: Vec<&Client> = clients.iter().collect();
    assert_converge(&cluster, &refs, &[], &d, &markers).await;
    let want = clients[0].read(&d, |x| x.text(TEXT)).expect("text");
    let deadline = Instant::now() + WAIT;
    while yjs.text() != want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(yjs.text(), want, "the y-websocket peer diverged");

    // Presence, renewed well within the TTL.
    let renewing = Arc::new(AtomicBool::new(true));
    for (i, c) in clients.iter().enumerate() {
        let (c, d, renewing) = (c.clone(), d.clone(), renewing.clone());
        tokio::spawn(async move {
            while renewing.load(Relaxed) {
                c.presence(&d, named(&format!("node{i}")), false).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
    }
    for (i, view) in views.iter().enumerate() {
        let others: BTreeSet<String> = (0..3)
            .filter(|&j| j != i)
            .map(|j| format!("node{j}"))
            .collect();
        assert!(
            view.wait(WAIT, |names| others.is_subset(names)).await,
            "client on node {i} sees {:?}, not {others:?}\n{}",
            view.names(),
            cluster.logs()
        );
    }

    cluster.kill9(2).await;
    let killed = Instant::now();
    let slack = Duration::from_secs(5);
    for (i, view) in views.iter().enumerate().take(2) {
        assert!(
            view.wait(ttl + slack, |names| !names.contains("node2"))
                .await,
            "the killed node's client is still present on node {i} {:?} after the TTL ({ttl:?}) \
             and {slack:?}\n{}",
            killed.elapsed(),
            cluster.logs()
        );
    }
    // The survivors' presence crosses nodes by renewal, not by luck: two TTLs after the kill,
    // they still see each other.
    tokio::time::sleep((2 * ttl).saturating_sub(killed.elapsed())).await;
    assert!(
        views[0].names().contains("node1") && views[1].names().contains("node0"),
        "renewed presence expired across nodes: node 0 sees {:?}, node 1 sees {:?}",
        views[0].names(),
        views[1].names()
    );
    renewing.store(false, Relaxed);
    for c in &clients {
        c.stop();
    }
    cluster.shutdown().await;
}

/// SIGKILL of a node while native clients on all three nodes write: every edit acknowledged
/// before the kill is in the database; the killed node's writers move to another node (as
/// through a load balancer) and everyone converges; the log is dense, no entry repeats what the
/// log already held, and every edit is in the document exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_under_load_loses_no_acknowledged_edit_and_logs_none_twice() {
    let mut cluster = Cluster::start().await;
    let d = doc("load");
    let balancer = TcpProxy::start(cluster.addr(2)).await;
    let via_balancer = format!("ws://{}/v1/sync", balancer.addr);
    let pace = Duration::from_millis(5);
    let mut writers = Vec::new();
    for (i, tag) in ["a0", "b0", "a1", "b1", "a2", "b2"].iter().enumerate() {
        let node = i / 2;
        let url = if node == 2 {
            via_balancer.clone()
        } else {
            cluster.ws_url(node)
        };
        writers.push(Writer::start(&url, 200 + i as u32, tag, &d, pace).await);
    }
    for w in &writers {
        assert!(
            w.progressed(0, 100, WAIT).await,
            "writer {} does not get acks",
            w.tag
        );
    }

    cluster.kill9(2).await;
    for w in &writers[4..] {
        assert!(
            w.client.wait_until(WAIT, |s| !s.is_connected()).await,
            "writer {} did not notice its node died",
            w.tag
        );
    }
    let acked: Vec<Vec<String>> = writers.iter().map(Writer::acked_markers).collect();
    eprintln!(
        "acknowledged at the kill: {:?}",
        acked.iter().map(Vec::len).collect::<Vec<_>>()
    );
    // Read the database before any writer can send anything again.
    let store = cluster.store().await;
    let stored = store
        .load(&d, ReplicaId::new(0x5707).expect("replica"))
        .await
        .expect("load")
        .expect("written")
        .document
        .text(TEXT);
    for (w, acked) in writers.iter().zip(&acked) {
        let lost: Vec<&String> = acked.iter().filter(|m| !stored.contains(*m)).collect();
        assert!(
            lost.is_empty(),
            "writer {}: {} of {} acknowledged edits are not in the database, e.g. {:?}; \
             errors {:?}\n{}",
            w.tag,
            lost.len(),
            acked.len(),
            &lost[..lost.len().min(10)],
            w.errors(),
            cluster.logs()
        );
    }

    balancer.retarget(cluster.addr(0));
    for (w, acked) in writers.iter().zip(&acked) {
        assert!(
            w.progressed(acked.len() as u64, 100, LONG_WAIT).await,
            "writer {} does not get acks after the kill; errors {:?}\n{}",
            w.tag,
            w.errors(),
            cluster.logs()
        );
    }
    let markers = settle_and_converge(&cluster, &mut writers, &d).await;

    let entries = whole_log(&store, &d).await;
    let head = store
        .document(&d)
        .await
        .expect("meta")
        .expect("written")
        .head_seq;
    eprintln!("{} edits in {} log entries", markers.len(), entries.len());
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=head).collect::<Vec<_>>(), "the log is not dense");
    let mut replay = Document::new(ReplicaId::new(0x7e57).expect("replica"));
    let mut repeats = Vec::new();
    for e in &entries {
        let applied = replay
            .apply(&e.delta(&d).expect("a stored delta decodes"))
            .expect("a stored delta applies");
        if !applied.changed {
            repeats.push((e.seq, e.replica));
        }
    }
    assert!(
        repeats.is_empty(),
        "log entries (seq, replica) that only repeat what the log held before them: {repeats:?}\n{}",
        cluster.logs()
    );
    let text = replay.text(TEXT);
    let wrong = not_exactly_once(&text, &markers);
    assert!(
        wrong.is_empty(),
        "edits not exactly once in the log: {wrong:?}"
    );
    assert_eq!(
        Some(text),
        writers[0].client.read(&d, |x| x.text(TEXT)),
        "the log and the clients differ"
    );

    // The killed node comes back (on a new port) and serves the same document.
    cluster.restart(2).await;
    let fresh = cluster_client(&cluster.ws_url(2), 299);
    fresh.open(&d, Vec::new()).await.expect("open");
    settled(&fresh, &d).await;
    assert_eq!(fresh.json(&d), writers[0].client.json(&d));
    fresh.stop();
    for w in &writers {
        w.client.stop();
    }
    cluster.shutdown().await;
}

/// A writer on each node (replicas from `replica`), each acknowledged `acks` times already.
async fn writer_per_node(
    cluster: &Cluster,
    d: &DocId,
    tags: [&str; 3],
    replica: u32,
    acks: u64,
) -> Vec<Writer> {
    let mut writers = Vec::new();
    for (i, tag) in tags.iter().enumerate() {
        let url = cluster.ws_url(i);
        let pace = Duration::from_millis(10);
        writers.push(Writer::start(&url, replica + i as u32, tag, d, pace).await);
    }
    for w in &writers {
        assert!(
            w.progressed(0, acks, WAIT).await,
            "writer {} gets no acks",
            w.tag
        );
    }
    writers
}

/// A document whose subscribers are all on node 0 is loaded there only, also while they write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_document_is_loaded_only_on_the_nodes_of_its_subscribers() {
    let cluster = Cluster::start().await;
    let d = doc("only-on-a");
    let pace = Duration::from_millis(10);
    let mut writers = Vec::new();
    for (i, tag) in ["x", "y"].iter().enumerate() {
        writers.push(Writer::start(&cluster.ws_url(0), 500 + i as u32, tag, &d, pace).await);
    }
    let live = "lattice_live_documents";
    assert!(
        cluster.wait_metric(0, live, WAIT, |v| v == 1.0).await,
        "node 0 does not hold the document live"
    );
    // Sampled over a few seconds of writing (several position checks long).
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let counts = [
            cluster.metric_of(0, live).await,
            cluster.metric_of(1, live).await,
            cluster.metric_of(2, live).await,
        ];
        assert_eq!(
            counts,
            [1.0, 0.0, 0.0],
            "live documents per node while node 0's clients write\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for w in &writers {
        assert!(
            w.acked() > 20,
            "writer {} wrote little: {}",
            w.tag,
            w.acked()
        );
    }
    settle_and_converge(&cluster, &mut writers, &d).await;
    assert_eq!(cluster.metric_of(1, live).await, 0.0);
    assert_eq!(cluster.metric_of(2, live).await, 0.0);
    for w in &writers {
        w.client.stop();
    }
    cluster.shutdown().await;
}

/// A cluster needs PostgreSQL: `--redis-url` with a SQLite database is refused at startup.
/// (RUST_BACKTRACE=1 is set on the test machines, so a backtrace may follow the message.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_url_with_sqlite_is_refused_at_startup() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let sqlite = format!("sqlite://{}", dir.path().join("lattice.db").display());
    let run = tokio::process::Command::new(lattice_binary())
        .args(["serve", "--bind", "127.0.0.1:0", "--no-auth"])
        .args(["--database-url", &sqlite])
        .args(["--redis-url", "redis://127.0.0.1:1"])
        .env_remove("LATTICE_AUTH_SECRET")
        .env_remove("LATTICE_REDIS_URL")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(WAIT, run)
        .await
        .expect("lattice serve exits by itself")
        .expect("run lattice");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it started: {stderr}");
    assert!(
        stderr.contains("--redis-url needs a PostgreSQL database"),
        "stderr: {stderr}"
    );
}

/// Subscribes a raw peer to `d` and reads up to its sync.
async fn raw_subscriber(url: &str, d: &DocId) -> RawPeer {
    let mut p = RawPeer::hello(url).await;
    let _ = p
        .send(&ClientMsg::Subscribe {
            doc: d.clone(),
            state: DocState::default(),
        })
        .await;
    loop {
        match p.read().await {
            Read::Msg(ServerMsg::Sync { .. }) => return p,
            Read::Msg(_) => continue,
            Read::Closed(code) => panic!("closed before its sync: {code:?}"),
        }
    }
}

/// A restore made through node 0 reaches a native subscriber on node 1; a soft delete made
/// through node 0 closes the subscribers on nodes 1 and 2, and the document is refused on
/// every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restore_and_soft_delete_on_one_node_reach_the_others() {
    let cluster = Cluster::start().await;
    let d = doc("notes/plan");
    let author = cluster_client(&cluster.ws_url(0), 601);
    author.open(&d, Vec::new()).await.expect("open");
    settled(&author, &d).await;
    author
        .edit(&d, |x, _| x.text_insert(TEXT, 0, "first version"))
        .await
        .expect("edit");
    settled(&author, &d).await; // seq 1
    author
        .edit(&d, |x, _| {
            let end = x.text_len(TEXT);
            x.text_insert(TEXT, end, ", then more")
        })
        .await
        .expect("edit");
    settled(&author, &d).await; // seq 2
    let reader = cluster_client(&cluster.ws_url(1), 602);
    reader.open(&d, Vec::new()).await.expect("open");
    let holds = |c: &Client, want: &'static str| {
        let d = d.clone();
        let c = c.clone();
        async move {
            c.wait_until(WAIT, |s| {
                s.document(&d).is_some_and(|x| x.text(TEXT) == want)
            })
            .await
        }
    };
    assert!(holds(&reader, "first version, then more").await);

    let restored = http_post(
        cluster.addr(0),
        "/api/admin/restore/notes/plan",
        None,
        Some(r#"{"to": 1}"#),
    )
    .await;
    assert_eq!(restored.status, 200, "{}", restored.body);
    assert_eq!(restored.json()["seq"], 3);
    assert!(
        holds(&reader, "first version").await,
        "the restore on node 0 did not reach node 1's client: {:?}\n{}",
        reader.read(&d, |x| x.text(TEXT)),
        cluster.logs()
    );
    assert!(holds(&author, "first version").await);

    let mut raw = raw_subscriber(&cluster.ws_url(1), &d).await;
    let mut sse = Sse::open(cluster.addr(2), "/v1/events/notes/plan", &[]).await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.next().await.event, "sync");
    let deleted = http_post(cluster.addr(0), "/api/admin/delete/notes/plan", None, None).await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    let reason = loop {
        let e = sse.next().await;
        if e.event == "close" {
            break e.data["reason"].clone();
        }
    };
    assert_eq!(reason, "document_unavailable", "node 2's SSE reader");
    assert!(
        reader.wait_until(WAIT, |s| !s.is_synced(&d)).await,
        "node 1's native client is still subscribed"
    );
    for i in 0..3 {
        let again = Sse::open(cluster.addr(i), "/v1/events/notes/plan", &[]).await;
        assert_eq!(again.status, 404, "node {i} serves the deleted document");
        let view = http_get(cluster.addr(i), "/v1/docs/notes/plan", None).await;
        assert_eq!(view.status, 404, "node {i}: {}", view.body);
    }
    // Checked last, so that everything above is known to hold when only this fails.
    let mut before_close = Vec::new();
    let code = loop {
        match raw.read().await {
            Read::Msg(m) => before_close.push(m),
            Read::Closed(code) => break code,
        }
    };
    assert_eq!(
        code,
        Some(4011),
        "node 1's subscriber was not closed as document unavailable; it read {before_close:?}\n{}",
        cluster.logs()
    );
    author.stop();
    reader.stop();
    cluster.shutdown().await;
}
