//! The position check: every live room's head against the database's, so that an entry whose
//! stream add failed, a trimmed stream or a Redis outage never leaves a room behind for long.

use std::sync::atomic::Ordering::Relaxed;

use tracing::{info, warn};

use super::{Cluster, Inbound};

/// Most documents asked about in one query.
const CHUNK: usize = 1_000;

pub(super) async fn position_check(cluster: Cluster) {
    let inner = &cluster.inner;
    // Said once per outage, not at every check.
    let mut failing = false;
    loop {
        let every = if cluster.redis_up() {
            inner.config.check_interval
        } else {
            inner.config.fallback_interval
        };
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = inner.check_now.notified() => {}
            () = inner.shutdown.cancelled() => return,
        }
        let live = cluster.snapshot();
        for chunk in live.chunks(CHUNK) {
            let docs: Vec<_> = chunk.iter().map(|(doc, _, _)| doc.clone()).collect();
            let heads = match inner.store.heads(&docs).await {
                Ok(heads) => {
                    if std::mem::take(&mut failing) {
                        info!("position check: the database answers again");
                    }
                    heads
                }
                Err(e) => {
                    if !std::mem::replace(&mut failing, true) {
                        warn!(error = %e, "position check: the database did not answer");
                    }
                    break;
                }
            };
            for head in heads {
                let Some((_, tx, known)) = chunk.iter().find(|(doc, _, _)| *doc == head.doc) else {
                    continue;
                };
                let what = if head.deleted {
                    Inbound::Deleted
                } else if head.head_seq > *known {
                    Inbound::Behind(head.head_seq)
                } else {
                    continue;
                };
                if tx.try_send(what).is_err() {
                    // Full: the room is busy with what is queued; the next check comes back.
                    inner.metrics.cluster.room_inbox_full.fetch_add(1, Relaxed);
                }
            }
        }
    }
}
