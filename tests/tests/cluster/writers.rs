//! Writers that edit with unique markers and keep books of what was acknowledged; convergence
//! checks.

use std::collections::BTreeMap;

use yrs::updates::decoder::Decode;

use super::*;

pub(crate) fn marker(tag: &str, n: u64) -> String {
    format!("<{tag}.{n}>")
}

/// Records a client's `Error` events, for failure messages.
pub(crate) fn record_errors(client: &Client) -> Arc<Mutex<Vec<String>>> {
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
pub(crate) struct Writer {
    pub(crate) tag: String,
    pub(crate) client: Client,
    pub(crate) doc: DocId,
    pub(crate) made: Arc<AtomicU64>,
    pub(crate) paused: Arc<AtomicBool>,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) task: Option<tokio::task::JoinHandle<()>>,
    pub(crate) errors: Arc<Mutex<Vec<String>>>,
}

impl Writer {
    pub(crate) async fn start(
        url: &str,
        replica: u32,
        tag: &str,
        d: &DocId,
        pace: Duration,
    ) -> Writer {
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

    pub(crate) fn made(&self) -> u64 {
        self.made.load(Relaxed)
    }

    /// How many of its edits are acknowledged. Acks cover a prefix of the edits (the client
    /// drops unconfirmed deltas in order), so these are its first `acked()` markers. `made` is
    /// read first: an edit made in between only makes the count smaller.
    pub(crate) fn acked(&self) -> u64 {
        let made = self.made();
        made.saturating_sub(self.client.pending(&self.doc) as u64)
    }

    pub(crate) fn markers(&self) -> Vec<String> {
        (0..self.made()).map(|n| marker(&self.tag, n)).collect()
    }

    pub(crate) fn acked_markers(&self) -> Vec<String> {
        (0..self.acked()).map(|n| marker(&self.tag, n)).collect()
    }

    pub(crate) fn pause(&self, paused: bool) {
        self.paused.store(paused, Relaxed);
    }

    pub(crate) async fn stop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(task) = self.task.take() {
            task.await.expect("writer");
        }
    }

    pub(crate) fn errors(&self) -> Vec<String> {
        self.errors.lock().expect("errors").clone()
    }

    /// Waits until it has `more` acknowledged edits beyond `from`.
    pub(crate) async fn progressed(&self, from: u64, more: u64, within: Duration) -> bool {
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

pub(crate) async fn write_loop(
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
pub(crate) async fn stop_and_settle(cluster: &Cluster, writers: &mut [Writer]) {
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
/// `errors` are the clients' `Error` events, where they were recorded, for the failure message.
pub(crate) async fn assert_converge(
    cluster: &Cluster,
    clients: &[&Client],
    errors: &[Vec<String>],
    d: &DocId,
    markers: &[String],
) {
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
        if complete && missing.is_empty() {
            continue;
        }
        let why = not_converged(cluster, clients, i, d, markers).await;
        panic!(
            "client {i} lacks {} of {total} edits, e.g. {:?}; its errors {:?}\n{why}\n{}",
            missing.len(),
            &missing[..missing.len().min(10)],
            errors.get(i),
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

/// Why client `i` may lack edits: whether it holds updates back (waiting for clocks a lost
/// message carried), which Yjs clocks it lacks against the others, what a fresh client on each
/// live node gets (whether that node's room lacks them too), and each node's cluster counters.
async fn not_converged(
    cluster: &Cluster,
    clients: &[&Client],
    i: usize,
    d: &DocId,
    markers: &[String],
) -> String {
    let clocks = |c: &Client| -> BTreeMap<u64, u32> {
        c.read(d, |x| {
            let sv = x.state().yjs;
            if sv.is_empty() {
                return BTreeMap::new();
            }
            yrs::StateVector::decode_v1(&sv)
                .map(|sv| sv.iter().map(|(k, v)| (k.get(), *v)).collect())
                .unwrap_or_default()
        })
        .unwrap_or_default()
    };
    let mine = clocks(clients[i]);
    let mut most: BTreeMap<u64, u32> = BTreeMap::new();
    for c in clients {
        for (client, clock) in clocks(c) {
            let e = most.entry(client).or_default();
            *e = (*e).max(clock);
        }
    }
    let lacks: Vec<String> = most
        .iter()
        .filter(|(k, v)| mine.get(k).copied().unwrap_or(0) < **v)
        .map(|(k, v)| format!("{k}: {} of {v}", mine.get(k).copied().unwrap_or(0)))
        .collect();
    let held = clients[i].read(d, Document::held_updates).unwrap_or(0);
    let mut out = format!(
        "client {i} holds back {held} updates; lacks clocks (Yjs client: has of most) {lacks:?}"
    );
    for node in cluster.alive() {
        let fresh = cluster_client(&cluster.ws_url(node), 0x0dd0 + node as u32);
        let opened = fresh.open(d, Vec::new()).await.is_ok()
            && fresh.wait_until(WAIT, |s| s.is_settled(d)).await;
        let text = fresh.read(d, |x| x.text(TEXT)).unwrap_or_default();
        let lacking = markers.iter().filter(|m| !text.contains(*m)).count();
        fresh.stop();
        let metrics = http_get(cluster.addr(node), "/metrics", None).await.body;
        let counters: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("lattice_cluster_"))
            .collect();
        out.push_str(&format!(
            "\n[node {node}] a fresh client (settled: {opened}) lacks {lacking} edits; {counters:?}"
        ));
    }
    out
}

/// What each marker's count is in `text`, for those not there exactly once.
pub(crate) fn not_exactly_once<'a>(text: &str, markers: &'a [String]) -> Vec<(&'a String, usize)> {
    markers
        .iter()
        .map(|m| (m, text.matches(m.as_str()).count()))
        .filter(|(_, n)| *n != 1)
        .collect()
}

/// Stops the writers, waits until each has every edit acknowledged, and checks that they
/// converge with every marker exactly once; returns the markers.
pub(crate) async fn settle_and_converge(
    cluster: &Cluster,
    writers: &mut [Writer],
    d: &DocId,
) -> Vec<String> {
    stop_and_settle(cluster, writers).await;
    let markers: Vec<String> = writers.iter().flat_map(Writer::markers).collect();
    let clients: Vec<&Client> = writers.iter().map(|w| &w.client).collect();
    let errors: Vec<Vec<String>> = writers.iter().map(Writer::errors).collect();
    assert_converge(cluster, &clients, &errors, d, &markers).await;
    markers
}
