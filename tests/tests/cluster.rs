//! The cluster (docs/cluster.md) end to end: three `lattice serve` processes on one PostgreSQL
//! database and one Redis, each a node that serves any document. Native clients, a raw
//! y-websocket peer and HTTP readers spread over the nodes must converge and see every entry
//! exactly once whatever happens to a node (SIGKILL), to Redis (restart, `CLIENT KILL`, a
//! trimmed stream) or to PostgreSQL (an outage); a node loads a document only for its own
//! subscribers; presence, soft delete and restore cross nodes.
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

fn marker(tag: &str, n: u64) -> String {
    format!("<{tag}.{n}>")
}

/// Records a client's `Error` events, for failure messages.
fn record_errors(client: &Client) -> Arc<Mutex<Vec<String>>> {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let mut events = client.events();
    let keep = errors.clone();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(e @ SessionEvent::Error { .. }) => {
                    keep.lock().expect("errors").push(format!("{e:?}"))
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    errors
}

/// A native client that keeps inserting its markers at the start of [`TEXT`] until stopped,
/// at most [`MAX_PENDING`] unacknowledged at a time.
struct Writer {
    tag: String,
    client: Client,
    doc: DocId,
    made: Arc<AtomicU64>,
    paused: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Writer {
    async fn start(url: &str, replica: u32, tag: &str, d: &DocId, pace: Duration) -> Writer {
        let client = cluster_client(url, replica);
        let errors = record_errors(&client);
        client.open(d, Vec::new()).await.expect("open");
        settled(&client, d).await;
        let (made, paused, stop) = (Arc::default(), Arc::default(), Arc::default());
        let task = tokio::spawn(write_loop(
            client.clone(),
            d.clone(),
            tag.to_owned(),
            pace,
            Arc::clone(&made),
            Arc::clone(&paused),
            Arc::clone(&stop),
        ));
        Writer {
            tag: tag.to_owned(),
            client,
            doc: d.clone(),
            made,
            paused,
            stop,
            task: Some(task),
            errors,
        }
    }

    fn made(&self) -> u64 {
        self.made.load(Relaxed)
    }

    /// How many of its edits are acknowledged. Acks cover a prefix of the edits (the client
    /// drops unconfirmed deltas in order), so these are its first `acked()` markers. `made` is
    /// read first: an edit made in between only makes the count smaller.
    fn acked(&self) -> u64 {
        let made = self.made();
        made.saturating_sub(self.client.pending(&self.doc) as u64)
    }

    fn markers(&self) -> Vec<String> {
        (0..self.made()).map(|n| marker(&self.tag, n)).collect()
    }

    fn acked_markers(&self) -> Vec<String> {
        (0..self.acked()).map(|n| marker(&self.tag, n)).collect()
    }

    fn pause(&self, paused: bool) {
        self.paused.store(paused, Relaxed);
    }

    async fn stop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(task) = self.task.take() {
            task.await.expect("writer");
        }
    }

    fn errors(&self) -> Vec<String> {
        self.errors.lock().expect("errors").clone()
    }

    /// Waits until it has `more` acknowledged edits beyond `from`.
    async fn progressed(&self, from: u64, more: u64, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.acked() >= from + more {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

async fn write_loop(
    client: Client,
    d: DocId,
    tag: String,
    pace: Duration,
    made: Arc<AtomicU64>,
    paused: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Relaxed) {
        if paused.load(Relaxed) || client.pending(&d) >= MAX_PENDING {
            client
                .wait_until(Duration::from_millis(50), |s| s.pending(&d) < MAX_PENDING)
                .await;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let n = made.load(Relaxed);
        let m = marker(&tag, n);
        client
            .edit(&d, |x, _| x.text_insert(TEXT, 0, &m))
            .await
            .expect("edit");
        made.store(n + 1, Relaxed);
        tokio::time::sleep(pace).await;
    }
}

/// Stops every writer and waits until each has all its edits acknowledged.
async fn stop_and_settle(cluster: &Cluster, writers: &mut [Writer]) {
    for w in writers.iter_mut() {
        w.stop().await;
    }
    for w in writers.iter() {
        let ok = w
            .client
            .wait_until(LONG_WAIT, |s| s.is_synced(&w.doc) && s.pending(&w.doc) == 0)
            .await;
        assert!(
            ok,
            "writer {} kept {} of {} edits unacknowledged; errors {:?}\n{}",
            w.tag,
            w.client.pending(&w.doc),
            w.made(),
            w.errors(),
            cluster.logs()
        );
    }
}

/// Waits until every client holds every marker, then checks that they hold the same document.
async fn assert_converge(cluster: &Cluster, clients: &[&Client], d: &DocId, markers: &[String]) {
    let total = markers.len();
    for (i, c) in clients.iter().enumerate() {
        // Every marker holds one '<' and is inserted once: counting them is a cheap test of
        // "all there" for the predicate, which runs on every message.
        let complete = c
            .wait_until(LONG_WAIT, |s| {
                s.document(d)
                    .is_some_and(|x| x.text(TEXT).matches('<').count() >= total)
            })
            .await;
        let text = c.read(d, |x| x.text(TEXT)).unwrap_or_default();
        let missing: Vec<&String> = markers.iter().filter(|m| !text.contains(*m)).collect();
        assert!(
            complete && missing.is_empty(),
            "client {i} lacks {} of {total} edits, e.g. {:?}\n{}",
            missing.len(),
            &missing[..missing.len().min(10)],
            cluster.logs()
        );
    }
    let reference = clients[0].json(d).expect("json");
    for (i, c) in clients.iter().enumerate().skip(1) {
        assert_eq!(
            c.json(d).expect("json"),
            reference,
            "client {i} diverged from client 0"
        );
    }
}

/// What each marker's count is in `text`, for those not there exactly once.
fn not_exactly_once<'a>(text: &str, markers: &'a [String]) -> Vec<(&'a String, usize)> {
    markers
        .iter()
        .map(|m| (m, text.matches(m.as_str()).count()))
        .filter(|(_, n)| *n != 1)
        .collect()
}

/// The other connections' presence on one document, as a client sees it (peer → state).
struct PresenceView {
    peers: Arc<Mutex<HashMap<u64, Value>>>,
}

impl PresenceView {
    fn watch(client: &Client, d: &DocId) -> PresenceView {
        let peers: Arc<Mutex<HashMap<u64, Value>>> = Arc::default();
        let mut events = client.events();
        let (keep, d) = (peers.clone(), d.clone());
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(SessionEvent::Presence {
                        doc, peer, state, ..
                    }) if doc == d => {
                        let mut p = keep.lock().expect("presence");
                        if state == Value::Null {
                            p.remove(&peer);
                        } else {
                            p.insert(peer, state);
                        }
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        PresenceView { peers }
    }

    /// The `name`s of the peers present.
    fn names(&self) -> BTreeSet<String> {
        self.peers
            .lock()
            .expect("presence")
            .values()
            .filter_map(|v| match v {
                Value::Map(m) => match m.get("name") {
                    Some(Value::String(s)) => Some(s.clone()),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    /// Waits until `pred` holds for the names present; returns whether it did.
    async fn wait(&self, within: Duration, pred: impl Fn(&BTreeSet<String>) -> bool) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if pred(&self.names()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn named(name: &str) -> Value {
    Value::Map([("name".to_owned(), Value::String(name.to_owned()))].into())
}

/// A raw y-websocket peer (as a stock Yjs client speaks) mirroring a document into a
/// [`Document`]: it syncs, sends one insert of its own, then applies every update it gets.
struct YjsMirror {
    doc: Arc<Mutex<Document>>,
    task: tokio::task::JoinHandle<()>,
}

impl YjsMirror {
    async fn join(addr: std::net::SocketAddr, id: &str, replica: u32, insert: &str) -> YjsMirror {
        let mut peer = YjsPeer::connect(addr, id, None).await;
        assert!(peer.send_frame(&[yws::encode_sync_step1(&[])]).await);
        let mut mirror = Document::new(ReplicaId::new(replica).expect("replica"));
        let apply = |mirror: &mut Document, update: Vec<u8>| {
            mirror
                .apply(&Delta {
                    yjs: update,
                    ..Delta::default()
                })
                .expect("a server update applies");
        };
        'synced: loop {
            match peer.read().await {
                YjsRead::Messages(messages) => {
                    for m in messages {
                        match m {
                            YMessage::SyncStep2 { update } => {
                                apply(&mut mirror, update);
                                break 'synced;
                            }
                            YMessage::Update { update } => apply(&mut mirror, update),
                            _ => {}
                        }
                    }
                }
                YjsRead::Closed(code) => {
                    panic!("the y-websocket connection closed before its sync: {code:?}")
                }
            }
        }
        let mine = mirror.text_insert(TEXT, 0, insert).expect("insert");
        assert!(peer.send_frame(&[yws::encode_update(&mine.yjs)]).await);
        let doc = Arc::new(Mutex::new(mirror));
        let keep = doc.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(frame)) = peer.ws.next().await {
                let Message::Binary(bytes) = frame else {
                    continue;
                };
                for m in yws::decode_frame(&bytes, usize::MAX).expect("server frames decode") {
                    if let YMessage::Update { update } | YMessage::SyncStep2 { update } = m {
                        apply(&mut keep.lock().expect("mirror"), update);
                    }
                }
            }
        });
        YjsMirror { doc, task }
    }

    fn text(&self) -> String {
        self.doc.lock().expect("mirror").text(TEXT)
    }
}

impl Drop for YjsMirror {
    fn drop(&mut self) {
        self.task.abort();
    }
}

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
    assert_converge(&cluster, &refs, &d, &markers).await;
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
    stop_and_settle(&cluster, &mut writers).await;
    let markers: Vec<String> = writers.iter().flat_map(Writer::markers).collect();
    let clients: Vec<&Client> = writers.iter().map(|w| &w.client).collect();
    assert_converge(&cluster, &clients, &d, &markers).await;

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

/// What happens to Redis under continuous writes, in [`readers_see_every_entry_once`].
#[derive(Debug, Clone, Copy)]
enum RedisTrouble {
    /// Stopped (its streams lost) and started again on the same port.
    Restart,
    /// `CLIENT KILL TYPE normal`, twice.
    ClientKill,
    /// The document's stream trimmed to nothing, with every node running and with one node
    /// paused (SIGSTOP) so that entries it has not read yet are trimmed away.
    TrimmedStream,
}

/// Three writers (one per node) write without pause while `trouble` happens; an SSE and a
/// long-poll reader on every node must see every seq from their start to the final head
/// exactly once and in order, the writers converge, and the nodes read what they missed from
/// PostgreSQL (`lattice_cluster_catchup_reads_total`).
async fn readers_see_every_entry_once(trouble: RedisTrouble) {
    let mut cluster = Cluster::start().await;
    let d = doc("stream");
    let mut writers = writer_per_node(&cluster, &d, ["w0", "w1", "w2"], 300, 5).await;
    let mut readers = Vec::new();
    for i in 0..3 {
        readers.push(SeqReader::sse(cluster.addr(i), "stream"));
        readers.push(SeqReader::long_poll(cluster.addr(i), "stream"));
    }
    for r in &readers {
        r.started().await;
    }
    let acked = |writers: &[Writer]| writers.iter().map(Writer::acked).collect::<Vec<_>>();
    let before = acked(&writers);
    for (w, from) in writers.iter().zip(&before) {
        assert!(w.progressed(*from, 50, WAIT).await);
    }
    let catchup_before = cluster
        .metric_sum("lattice_cluster_catchup_reads_total")
        .await;

    match trouble {
        RedisTrouble::Restart => redis_down_and_back(&mut cluster, &writers).await,
        RedisTrouble::ClientKill => {
            let errors_before = cluster
                .metric_sum("lattice_cluster_redis_errors_total")
                .await;
            let killed = cluster.redis.client_kill_normal().await;
            assert!(killed >= 3, "CLIENT KILL found {killed} node connections");
            let now = acked(&writers);
            for (w, from) in writers.iter().zip(&now) {
                assert!(w.progressed(*from, 10, WAIT).await);
            }
            cluster.redis.client_kill_normal().await;
            for i in 0..3 {
                assert!(
                    cluster
                        .wait_metric(i, "lattice_cluster_redis_up", WAIT, |v| v == 1.0)
                        .await,
                    "node {i} did not reconnect to Redis\n{}",
                    cluster.logs()
                );
            }
            let errors = cluster
                .metric_sum("lattice_cluster_redis_errors_total")
                .await;
            assert!(
                errors > errors_before,
                "no node counted its killed Redis connections ({errors_before} -> {errors})"
            );
        }
        RedisTrouble::TrimmedStream => {
            let trimmed = cluster.redis.xtrim("stream", 0).await;
            assert!(trimmed > 0, "the stream was empty before the trim");
            let now = acked(&writers);
            for (w, from) in writers.iter().zip(&now) {
                assert!(w.progressed(*from, 10, WAIT).await);
            }
            // Node 1 stops dead between commits of its own (its writer paused and fully
            // acknowledged, so it holds no row lock the others wait for), the others write on,
            // and what node 1 has not read is trimmed before it resumes.
            writers[1].pause(true);
            assert!(
                writers[1]
                    .client
                    .wait_until(WAIT, |s| s.pending(&d) == 0)
                    .await
            );
            let entries = "lattice_cluster_catchup_entries_total";
            let caught_up = cluster.metric_of(1, entries).await;
            cluster.pause(1);
            let now = acked(&writers);
            for i in [0, 2] {
                assert!(
                    writers[i].progressed(now[i], 20, WAIT).await,
                    "writer {} stalled while node 1 was paused",
                    writers[i].tag
                );
            }
            let trimmed = cluster.redis.xtrim("stream", 0).await;
            cluster.resume(1);
            writers[1].pause(false);
            assert!(trimmed > 0, "nothing was written while node 1 was paused");
            assert!(
                cluster
                    .wait_metric(1, entries, WAIT, |v| v > caught_up)
                    .await,
                "node 1 read nothing from the database after the entries it had not read were \
                 trimmed\n{}",
                cluster.logs()
            );
        }
    }

    // Writing goes on after the trouble on every node.
    let now = acked(&writers);
    for (w, from) in writers.iter().zip(&now) {
        assert!(
            w.progressed(*from, 50, LONG_WAIT).await,
            "writer {} gets no acks after the trouble; errors {:?}\n{}",
            w.tag,
            w.errors(),
            cluster.logs()
        );
    }
    stop_and_settle(&cluster, &mut writers).await;
    let markers: Vec<String> = writers.iter().flat_map(Writer::markers).collect();
    let clients: Vec<&Client> = writers.iter().map(|w| &w.client).collect();
    assert_converge(&cluster, &clients, &d, &markers).await;

    let head = cluster
        .store()
        .await
        .document(&d)
        .await
        .expect("meta")
        .expect("written")
        .head_seq;
    for r in readers {
        let what = r.what.clone();
        let log = r.finish(head, WAIT).await;
        let start = log.start.expect("started");
        eprintln!(
            "{what} ({trouble:?}): from {start} to {head}, {} events, notes {:?}",
            log.seqs.len(),
            log.notes
        );
        let want: Vec<u64> = (start + 1..=head).collect();
        if log.seqs != want {
            let mut seen = BTreeSet::new();
            let repeated: Vec<u64> = log
                .seqs
                .iter()
                .copied()
                .filter(|s| !seen.insert(*s))
                .collect();
            let missing: Vec<u64> = want.iter().copied().filter(|s| !seen.contains(s)).collect();
            let out_of_order = log.seqs.windows(2).filter(|w| w[1] <= w[0]).count();
            panic!(
                "{what} ({trouble:?}): from {start} to {head} it saw {} events; missing {:?}, \
                 repeated {:?}, {out_of_order} out of order; notes {:?}\n{}",
                log.seqs.len(),
                &missing[..missing.len().min(30)],
                &repeated[..repeated.len().min(30)],
                log.notes,
                cluster.logs()
            );
        }
    }
    let catchup = cluster
        .metric_sum("lattice_cluster_catchup_reads_total")
        .await;
    eprintln!("catch-up reads over the nodes: {catchup_before} -> {catchup}");
    assert!(
        catchup > catchup_before,
        "no node read missed entries from the database ({catchup_before} -> {catchup})"
    );
    for w in &writers {
        w.client.stop();
    }
    cluster.shutdown().await;
}

/// Redis stopped under writes: every node says so (`/readyz` 200 `degraded`,
/// `lattice_cluster_redis_up` 0), keeps acknowledging and delivers across nodes by polling the
/// database; started again, the nodes reconnect and the streams carry entries again.
async fn redis_down_and_back(cluster: &mut Cluster, writers: &[Writer]) {
    cluster.redis.stop().await;
    for i in 0..3 {
        assert!(
            cluster
                .wait_metric(i, "lattice_cluster_redis_up", WAIT, |v| v == 0.0)
                .await,
            "node {i} still reports Redis up\n{}",
            cluster.logs()
        );
        let deadline = Instant::now() + WAIT;
        let mut ready = cluster.readyz(i).await;
        while !(ready.0 == 200 && ready.1.starts_with("degraded")) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            ready = cluster.readyz(i).await;
        }
        assert!(
            ready.0 == 200 && ready.1.starts_with("degraded"),
            "node {i} /readyz with Redis down: {ready:?}"
        );
    }
    // Still acknowledged, and delivered across nodes: node 0's newest edit reaches the
    // clients of nodes 1 and 2.
    let d = writers[0].doc.clone();
    let made = writers[0].made();
    assert!(
        writers[0].progressed(made, 5, WAIT).await,
        "no acks while Redis is down; errors {:?}\n{}",
        writers[0].errors(),
        cluster.logs()
    );
    let probe = marker(&writers[0].tag, made);
    for w in &writers[1..] {
        assert!(
            w.client
                .wait_until(WAIT, |s| s
                    .document(&d)
                    .is_some_and(|x| x.text(TEXT).contains(&probe)))
                .await,
            "{probe} written on node 0 while Redis is down never reached writer {}\n{}",
            w.tag,
            cluster.logs()
        );
    }
    let streamed = cluster
        .metric_sum("lattice_cluster_stream_entries_total")
        .await;
    cluster.redis.start_again().await;
    for i in 0..3 {
        assert!(
            cluster
                .wait_metric(i, "lattice_cluster_redis_up", WAIT, |v| v == 1.0)
                .await,
            "node {i} did not reconnect to Redis\n{}",
            cluster.logs()
        );
        let (status, body) = cluster.readyz(i).await;
        assert!(
            status == 200 && !body.starts_with("degraded"),
            "node {i} /readyz with Redis back: {status} {body}"
        );
    }
    let deadline = Instant::now() + WAIT;
    let mut now = streamed;
    while now <= streamed && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        now = cluster
            .metric_sum("lattice_cluster_stream_entries_total")
            .await;
    }
    assert!(
        now > streamed,
        "no entry came through Redis after its restart\n{}",
        cluster.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_on_every_node_see_each_entry_once_across_a_redis_restart() {
    readers_see_every_entry_once(RedisTrouble::Restart).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_on_every_node_see_each_entry_once_across_killed_redis_connections() {
    readers_see_every_entry_once(RedisTrouble::ClientKill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_on_every_node_see_each_entry_once_across_a_trimmed_stream() {
    readers_see_every_entry_once(RedisTrouble::TrimmedStream).await;
}

/// PostgreSQL away under writes on every node (the nodes reach it through a proxy the test
/// cuts): nothing written meanwhile is acknowledged, nothing acknowledged is lost, and once it
/// is back the same node processes acknowledge again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_outage_under_a_cluster_acknowledges_nothing_and_loses_nothing() {
    let mut cluster = Cluster::start_with(ClusterOptions {
        database_proxy: true,
        ..ClusterOptions::default()
    })
    .await;
    let d = doc("outage");
    let mut writers = writer_per_node(&cluster, &d, ["p0", "p1", "p2"], 400, 10).await;

    cluster.database.as_ref().expect("proxy").down();
    let made_at_cut: Vec<u64> = writers.iter().map(Writer::made).collect();
    for i in 0..3 {
        let deadline = Instant::now() + WAIT;
        let mut ready = cluster.readyz(i).await;
        while ready.0 != 503 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            ready = cluster.readyz(i).await;
        }
        assert_eq!(
            ready.0, 503,
            "node {i} /readyz with the database down: {ready:?}"
        );
    }
    // Eight seconds down: the writers go on editing, and no edit made after the cut is
    // acknowledged.
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        for (w, cut) in writers.iter().zip(&made_at_cut) {
            let acked = w.acked();
            assert!(
                acked <= *cut,
                "writer {}: {acked} edits acknowledged, but only {cut} were made before the \
                 database went away\n{}",
                w.tag,
                cluster.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (w, cut) in writers.iter().zip(&made_at_cut) {
        assert!(
            w.made() > *cut,
            "writer {} made no edit during the outage",
            w.tag
        );
    }

    cluster.database.as_ref().expect("proxy").up().await;
    for w in &writers {
        assert!(
            w.client
                .wait_until(LONG_WAIT, |s| s.is_synced(&d) && s.pending(&d) == 0)
                .await,
            "writer {} keeps {} edits unacknowledged after the outage; errors {:?}\n{}",
            w.tag,
            w.client.pending(&d),
            w.errors(),
            cluster.logs()
        );
    }
    let now: Vec<u64> = writers.iter().map(Writer::acked).collect();
    for (w, from) in writers.iter().zip(&now) {
        assert!(
            w.progressed(*from, 10, WAIT).await,
            "writer {} gets no acks after the outage",
            w.tag
        );
    }
    for i in 0..3 {
        assert!(
            cluster.node_mut(i).is_running(),
            "node {i} exited during the outage\n{}",
            cluster.logs()
        );
    }
    stop_and_settle(&cluster, &mut writers).await;
    let markers: Vec<String> = writers.iter().flat_map(Writer::markers).collect();
    let clients: Vec<&Client> = writers.iter().map(|w| &w.client).collect();
    assert_converge(&cluster, &clients, &d, &markers).await;
    let stored = cluster
        .store()
        .await
        .load(&d, ReplicaId::new(0x5707).expect("replica"))
        .await
        .expect("load")
        .expect("written")
        .document
        .text(TEXT);
    let wrong = not_exactly_once(&stored, &markers);
    assert!(
        wrong.is_empty(),
        "acknowledged edits not exactly once in the database: {:?}",
        &wrong[..wrong.len().min(20)]
    );
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
    stop_and_settle(&cluster, &mut writers).await;
    let markers: Vec<String> = writers.iter().flat_map(Writer::markers).collect();
    let clients: Vec<&Client> = writers.iter().map(|w| &w.client).collect();
    assert_converge(&cluster, &clients, &d, &markers).await;
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
