//! The node's pub/sub subscriber: the control channel, and the presence channel of each
//! document live here (subscribed as rooms join, unsubscribed as they leave).

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures_util::StreamExt as _;
use lattice_engine::DocId;
use redis::aio::{PubSubSink, PubSubStream};
use tracing::{debug, info};

use super::stream::{RECONNECT_WAIT, failed};
use super::{CONTROL_CHANNEL, Cluster, ControlMsg, Inbound, PresenceMsg, doc_of, presence_channel};

/// How often the subscription list is compared with the live rooms even without a change
/// signal (a leave is not urgent).
const RESUBSCRIBE_EVERY: Duration = Duration::from_secs(1);

pub(super) async fn subscriber(cluster: Cluster) {
    let inner = &cluster.inner;
    let mut joined = inner.joined.subscribe();
    loop {
        if inner.shutdown.is_cancelled() {
            return;
        }
        let (mut sink, mut stream) = match connect(&cluster).await {
            Ok(halves) => halves,
            Err(e) => {
                let was_up = inner.subscriber_up.swap(false, Relaxed);
                failed(&cluster, "subscriber", was_up, &e);
                tokio::time::sleep(RECONNECT_WAIT).await;
                continue;
            }
        };
        if !inner.subscriber_up.swap(true, Relaxed) {
            info!("Redis subscriber connected");
        }
        cluster.update_redis_gauge();
        let mut subscribed: HashSet<DocId> = HashSet::new();
        let result: redis::RedisResult<()> = loop {
            if let Err(e) = resubscribe(&cluster, &mut sink, &mut subscribed).await {
                break Err(e);
            }
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(msg) => receive(&cluster, &msg),
                    None => break Err(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "the pub/sub connection closed",
                    ))),
                },
                _ = joined.changed() => {}
                () = tokio::time::sleep(RESUBSCRIBE_EVERY) => {}
                () = inner.shutdown.cancelled() => return,
            }
        };
        if let Err(e) = result {
            let was_up = inner.subscriber_up.swap(false, Relaxed);
            failed(&cluster, "subscriber", was_up, &e);
            tokio::time::sleep(RECONNECT_WAIT).await;
        }
    }
}

async fn connect(cluster: &Cluster) -> redis::RedisResult<(PubSubSink, PubSubStream)> {
    let pubsub = tokio::time::timeout(
        Duration::from_secs(2),
        cluster.inner.client.get_async_pubsub(),
    )
    .await
    .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "connect timed out")))??;
    let (mut sink, stream) = pubsub.split();
    sink.subscribe(CONTROL_CHANNEL).await?;
    Ok((sink, stream))
}

/// Subscribes to the presence channels of the rooms that joined, and leaves the others'.
async fn resubscribe(
    cluster: &Cluster,
    sink: &mut PubSubSink,
    subscribed: &mut HashSet<DocId>,
) -> redis::RedisResult<()> {
    let live: HashSet<DocId> = cluster
        .snapshot()
        .into_iter()
        .map(|(doc, _, _)| doc)
        .collect();
    let gone: Vec<DocId> = subscribed.difference(&live).cloned().collect();
    for doc in gone {
        sink.unsubscribe(presence_channel(&doc)).await?;
        subscribed.remove(&doc);
    }
    let new: Vec<DocId> = live.difference(subscribed).cloned().collect();
    for doc in new {
        sink.subscribe(presence_channel(&doc)).await?;
        subscribed.insert(doc);
    }
    Ok(())
}

/// Hands a presence or control message to its room.
fn receive(cluster: &Cluster, msg: &redis::Msg) {
    let inner = &cluster.inner;
    let channel = msg.get_channel_name();
    let payload = msg.get_payload_bytes();
    if channel == CONTROL_CHANNEL {
        match rmp_serde::from_slice::<ControlMsg>(payload) {
            Ok(ControlMsg::Deleted { node, doc }) if node != inner.node => {
                if let Ok(doc) = DocId::new(&doc) {
                    cluster.deliver(&doc, Inbound::Deleted);
                }
            }
            Ok(_) => {}
            Err(e) => debug!(error = %e, "an unreadable control message"),
        }
        return;
    }
    let Some(doc) = doc_of(channel) else { return };
    match rmp_serde::from_slice::<PresenceMsg>(payload) {
        Ok(PresenceMsg::Set { node, presence }) if node != inner.node => {
            inner.metrics.cluster.presence_in.fetch_add(1, Relaxed);
            cluster.deliver(&doc, Inbound::Presence { node, presence });
        }
        Ok(PresenceMsg::Query { node }) if node != inner.node => {
            cluster.deliver(&doc, Inbound::PresenceQuery);
        }
        Ok(_) => {}
        Err(e) => debug!(error = %e, "an unreadable presence message"),
    }
}
