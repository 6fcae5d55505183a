//! The node's two stream tasks: the publisher adds committed entries to their documents'
//! streams (and sends pub/sub messages); the reader blocks on the streams of the documents
//! live here and hands what other nodes committed to their rooms.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use lattice_engine::DocId;
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use redis::streams::StreamReadReply;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{Cluster, Inbound, Outgoing, RemoteEntry, doc_of, stream_key};

/// Most entries and messages sent in one pipeline.
const PUBLISH_BATCH: usize = 512;
/// How long the reader's `XREAD` blocks before it looks again at which rooms are live.
const READ_BLOCK: Duration = Duration::from_secs(2);
/// Most entries one `XREAD` returns per stream.
const READ_COUNT: usize = 512;
/// Wait before connecting again after a failure.
pub(super) const RECONNECT_WAIT: Duration = Duration::from_millis(250);

/// A connection for commands, with timeouts so a Redis that stops answering is noticed.
pub(super) async fn connect(
    cluster: &Cluster,
    response_timeout: Duration,
) -> redis::RedisResult<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(response_timeout));
    cluster
        .inner
        .client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// Counts a Redis failure of `task` and says so once per outage.
pub(super) fn failed(cluster: &Cluster, task: &str, was_up: bool, e: &redis::RedisError) {
    cluster
        .inner
        .metrics
        .cluster
        .redis_errors
        .fetch_add(1, Relaxed);
    if was_up {
        warn!(error = %e, task, "Redis unavailable: cross-node delivery falls back to polling the database");
    } else {
        debug!(error = %e, task, "Redis still unavailable");
    }
    cluster.update_redis_gauge();
}

impl Cluster {
    pub(super) fn update_redis_gauge(&self) {
        self.inner
            .metrics
            .cluster
            .redis_up
            .store(u64::from(self.redis_up()), Relaxed);
    }
}

/// Adds committed entries to their streams and sends pub/sub messages, a batch per pipeline.
/// While Redis is down, what comes is counted and dropped: the other nodes read the entries
/// from the database, presence is renewed by its clients, and a soft delete is found by the
/// position check.
pub(super) async fn publisher(cluster: Cluster, mut rx: mpsc::Receiver<Outgoing>) {
    let inner = &cluster.inner;
    let mut conn: Option<MultiplexedConnection> = None;
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    loop {
        if conn.is_none() {
            match connect(&cluster, Duration::from_secs(5)).await {
                Ok(c) => {
                    conn = Some(c);
                    inner.publisher_up.store(true, Relaxed);
                    cluster.update_redis_gauge();
                }
                Err(e) => {
                    let was_up = inner.publisher_up.swap(false, Relaxed);
                    failed(&cluster, "publisher", was_up, &e);
                    // What came meanwhile is not kept (see above).
                    batch.clear();
                    while let Ok(out) = rx.try_recv() {
                        batch.push(out);
                    }
                    drop_batch(&cluster, &batch);
                    tokio::select! {
                        () = tokio::time::sleep(RECONNECT_WAIT) => {}
                        () = inner.shutdown.cancelled() => return,
                    }
                    continue;
                }
            }
        }
        batch.clear();
        tokio::select! {
            n = rx.recv_many(&mut batch, PUBLISH_BATCH) => if n == 0 { return },
            () = inner.shutdown.cancelled() => return,
        }
        let Some(c) = conn.as_mut() else { continue };
        if let Err(e) = send_batch(&cluster, c, &batch).await {
            conn = None;
            let was_up = inner.publisher_up.swap(false, Relaxed);
            failed(&cluster, "publisher", was_up, &e);
            drop_batch(&cluster, &batch);
        }
    }
}

/// Entries that could not be published: counted (their readers catch up from the database).
fn drop_batch(cluster: &Cluster, batch: &[Outgoing]) {
    let entries = batch
        .iter()
        .filter(|o| matches!(o, Outgoing::Entry { .. }))
        .count();
    cluster
        .inner
        .metrics
        .cluster
        .publish_failures
        .fetch_add(entries as u64, Relaxed);
}

async fn send_batch(
    cluster: &Cluster,
    conn: &mut MultiplexedConnection,
    batch: &[Outgoing],
) -> redis::RedisResult<()> {
    let inner = &cluster.inner;
    let node = cluster.node_name();
    let ttl_ms = u64::try_from(inner.config.stream_ttl.as_millis()).unwrap_or(u64::MAX);
    let mut pipe = redis::pipe();
    let mut entries = 0usize;
    for out in batch {
        match out {
            Outgoing::Entry {
                doc,
                seq,
                author,
                delta_bytes,
            } => {
                let key = stream_key(doc);
                let mut xadd = redis::cmd("XADD");
                xadd.arg(&key)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(inner.config.stream_max_len)
                    .arg(format!("{seq}-0"))
                    .arg("node")
                    .arg(&node)
                    .arg("delta")
                    .arg(delta_bytes.as_slice());
                if let Some(author) = author {
                    xadd.arg("author").arg(author);
                }
                pipe.add_command(xadd);
                pipe.cmd("PEXPIRE").arg(&key).arg(ttl_ms).ignore();
                entries += 1;
            }
            Outgoing::Publish { channel, payload } => {
                pipe.cmd("PUBLISH")
                    .arg(channel)
                    .arg(payload.as_slice())
                    .ignore();
            }
            Outgoing::Unblock => {
                let id = inner.reader_id.load(Relaxed);
                if id != 0 {
                    pipe.cmd("CLIENT").arg("UNBLOCK").arg(id).ignore();
                }
            }
        }
    }
    if entries == 0 {
        return pipe.exec_async(conn).await;
    }
    // One answer per XADD (the rest are ignored): an id, or the error of an entry whose seq is
    // not above the stream's last (another node published a later seq first).
    let answers: Vec<redis::RedisResult<redis::Value>> =
        pipe.ignore_errors().query_async(conn).await?;
    for answer in answers {
        if let Err(e) = answer {
            if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                return Err(e);
            }
            if e.to_string().contains("equal or smaller") {
                inner
                    .metrics
                    .cluster
                    .publish_out_of_order
                    .fetch_add(1, Relaxed);
            } else {
                warn!(error = ?e, "a stream refused an entry");
                inner.metrics.cluster.publish_failures.fetch_add(1, Relaxed);
            }
        }
    }
    Ok(())
}

/// Blocks on the streams of the documents live here, from each room's position, and hands
/// other nodes' entries to the rooms. After a reconnect it resumes from the same positions
/// (never from `$`), and asks for a position check, which reads from the database whatever
/// the streams no longer hold.
pub(super) async fn reader(cluster: Cluster) {
    let inner = &cluster.inner;
    let mut joined = inner.joined.subscribe();
    // Where this reader is in each stream (seqs); never behind the room's own head.
    let mut positions: HashMap<DocId, u64> = HashMap::new();
    loop {
        if inner.shutdown.is_cancelled() {
            return;
        }
        let block = READ_BLOCK + Duration::from_secs(5);
        let mut conn = match connect(&cluster, block).await {
            Ok(c) => c,
            Err(e) => {
                let was_up = inner.reader_up.swap(false, Relaxed);
                failed(&cluster, "reader", was_up, &e);
                tokio::time::sleep(RECONNECT_WAIT).await;
                continue;
            }
        };
        match redis::cmd("CLIENT")
            .arg("ID")
            .query_async::<u64>(&mut conn)
            .await
        {
            Ok(id) => inner.reader_id.store(id, Relaxed),
            Err(e) => {
                let was_up = inner.reader_up.swap(false, Relaxed);
                failed(&cluster, "reader", was_up, &e);
                tokio::time::sleep(RECONNECT_WAIT).await;
                continue;
            }
        }
        if !inner.reader_up.swap(true, Relaxed) {
            info!("Redis stream reader connected");
        }
        cluster.update_redis_gauge();
        // Whatever was committed while the streams were out of reach.
        inner.check_now.notify_one();
        if let Err(e) = read_until_error(&cluster, &mut conn, &mut positions, &mut joined).await {
            let was_up = inner.reader_up.swap(false, Relaxed);
            inner.reader_id.store(0, Relaxed);
            failed(&cluster, "reader", was_up, &e);
            tokio::time::sleep(RECONNECT_WAIT).await;
        }
        if inner.shutdown.is_cancelled() {
            return;
        }
    }
}

async fn read_until_error(
    cluster: &Cluster,
    conn: &mut MultiplexedConnection,
    positions: &mut HashMap<DocId, u64>,
    joined: &mut tokio::sync::watch::Receiver<u64>,
) -> redis::RedisResult<()> {
    let inner = &cluster.inner;
    loop {
        joined.borrow_and_update();
        let live = cluster.snapshot();
        positions.retain(|doc, _| live.iter().any(|(d, _, _)| d == doc));
        if live.is_empty() {
            tokio::select! {
                _ = joined.changed() => continue,
                () = inner.shutdown.cancelled() => return Ok(()),
            }
        }
        let mut keys = Vec::with_capacity(live.len());
        let mut ids = Vec::with_capacity(live.len());
        for (doc, _, head) in &live {
            let at = positions.entry(doc.clone()).or_insert(*head);
            *at = (*at).max(*head);
            keys.push(stream_key(doc));
            ids.push(format!("{at}-0"));
        }
        let block_ms = u64::try_from(READ_BLOCK.as_millis()).unwrap_or(2_000);
        let mut xread = redis::cmd("XREAD");
        xread
            .arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(&keys)
            .arg(&ids);
        let read = xread.query_async::<Option<StreamReadReply>>(conn);
        let reply = tokio::select! {
            r = read => r?,
            () = inner.shutdown.cancelled() => return Ok(()),
        };
        let Some(reply) = reply else { continue };
        for stream in reply.keys {
            let Some(doc) = doc_of(&stream.key) else {
                continue;
            };
            let mut entries = Vec::with_capacity(stream.ids.len());
            let mut last = None;
            for id in stream.ids {
                let Some(seq) = id
                    .id
                    .split_once('-')
                    .and_then(|(s, _)| s.parse::<u64>().ok())
                else {
                    continue;
                };
                last = Some(seq);
                let field = |name: &str| id.map.get(name).cloned();
                let node = field("node")
                    .and_then(|v| redis::from_redis_value::<String>(v).ok())
                    .and_then(|n| u64::from_str_radix(&n, 16).ok());
                if node == Some(inner.node) {
                    // Ours: the room has it from its own commit.
                    continue;
                }
                let Some(delta_bytes) =
                    field("delta").and_then(|v| redis::from_redis_value::<Vec<u8>>(v).ok())
                else {
                    continue;
                };
                let author =
                    field("author").and_then(|v| redis::from_redis_value::<String>(v).ok());
                entries.push(RemoteEntry {
                    seq,
                    author,
                    delta_bytes,
                });
            }
            if let Some(last) = last {
                positions.insert(doc.clone(), last);
            }
            if entries.is_empty() {
                continue;
            }
            let count = entries.len() as u64;
            if cluster.deliver(&doc, Inbound::Entries(entries)) {
                inner
                    .metrics
                    .cluster
                    .stream_entries
                    .fetch_add(count, Relaxed);
            } else {
                // The room's queue is full: it finds the gap and reads the entries from the
                // database.
                inner
                    .metrics
                    .cluster
                    .room_inbox_full
                    .fetch_add(count, Relaxed);
            }
        }
    }
}
