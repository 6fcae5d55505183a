//! Group commit: many concurrent appends, few transactions.
//!
//! Appenders send requests into one bounded queue; a single task takes whatever has queued up
//! (up to [`StoreConfig::max_batch_entries`] entries or [`StoreConfig::max_batch_bytes`] bytes),
//! commits it in one transaction and only then answers every request in it. While one
//! transaction commits, the next batch accumulates, so the batch size adapts to the load: one
//! writer gets one transaction per append, a thousand writers share a transaction (and its
//! fsync). There is no timer: nothing waits for company.
//!
//! On SQLite the committer also drains the journal (see `sqlite/drain.rs`): after each transaction
//! it drains one slice of a drain cycle, if one is due or under way, and while idle it drains
//! slices back to back.
//!
//! **Invariant:** a request's reply is sent after its transaction has committed, and requests
//! are committed in queue order, so one task's appends get increasing sequence numbers.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::backend::{AnyBackend, Backend as _, JournalDrain as _};
use super::changes::CommitFeed;
use super::checkpoint::{CheckpointQueue, checkpoint_due};
use super::{AppendError, NewEntry, StoreConfig};
use crate::clock::now_ms;

pub(crate) enum Command {
    Append {
        entries: Vec<NewEntry>,
        reply: oneshot::Sender<Result<Vec<u64>, AppendError>>,
    },
    Flush {
        reply: oneshot::Sender<()>,
    },
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Append { entries, .. } => write!(f, "Append({} entries)", entries.len()),
            Command::Flush { .. } => f.write_str("Flush"),
        }
    }
}

/// Starts the group committer and returns the sending side of its queue.
pub(crate) fn spawn(
    backend: Arc<AnyBackend>,
    config: StoreConfig,
    checkpoints: Arc<CheckpointQueue>,
    feed: Arc<CommitFeed>,
) -> mpsc::Sender<Command> {
    let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
    tokio::spawn(run(backend, config, checkpoints, feed, rx));
    tx
}

async fn run(
    backend: Arc<AnyBackend>,
    config: StoreConfig,
    checkpoints: Arc<CheckpointQueue>,
    feed: Arc<CommitFeed>,
    mut rx: mpsc::Receiver<Command>,
) {
    let mut next: Option<Command> = None;
    loop {
        let first = match next.take() {
            Some(cmd) => cmd,
            None => {
                let idle_wait = backend.journal().and_then(|j| j.idle_wait());
                let received = match idle_wait {
                    None => rx.recv().await,
                    Some(wait) => match tokio::time::timeout(wait, rx.recv()).await {
                        Ok(received) => received,
                        Err(_) => {
                            if let Some(journal) = backend.journal() {
                                journal.step(true).await;
                            }
                            continue;
                        }
                    },
                };
                match received {
                    Some(cmd) => cmd,
                    None => return,
                }
            }
        };
        let mut requests: Vec<Vec<NewEntry>> = Vec::new();
        let mut replies = Vec::new();
        let mut flushes = Vec::new();
        let mut entries = 0usize;
        let mut bytes = 0usize;
        let mut take = |cmd: Command,
                        requests: &mut Vec<Vec<NewEntry>>,
                        entries: &mut usize,
                        bytes: &mut usize| match cmd {
            Command::Append {
                entries: batch,
                reply,
            } => {
                *entries += batch.len();
                *bytes += batch.iter().map(|e| e.delta_bytes().len()).sum::<usize>();
                requests.push(batch);
                replies.push(reply);
            }
            Command::Flush { reply } => flushes.push(reply),
        };
        take(first, &mut requests, &mut entries, &mut bytes);
        while entries < config.max_batch_entries && bytes < config.max_batch_bytes {
            let Ok(cmd) = rx.try_recv() else { break };
            let fits = match &cmd {
                Command::Append { entries: batch, .. } => {
                    let b: usize = batch.iter().map(|e| e.delta_bytes().len()).sum();
                    entries + batch.len() <= config.max_batch_entries
                        && bytes + b <= config.max_batch_bytes
                }
                Command::Flush { .. } => true,
            };
            if !fits {
                // Commit it first in the next transaction, so queue order is kept.
                next = Some(cmd);
                break;
            }
            take(cmd, &mut requests, &mut entries, &mut bytes);
        }

        if !requests.is_empty() {
            match backend.append_batch(&requests, now_ms()).await {
                Ok((results, counters)) => {
                    for (reply, result) in replies.into_iter().zip(results) {
                        let _ = reply.send(result);
                    }
                    for c in &counters {
                        if checkpoint_due(
                            &config,
                            c.head_seq.saturating_sub(c.checkpoint_seq),
                            c.byte_count.saturating_sub(c.checkpoint_byte_count),
                        ) {
                            checkpoints.trigger(&c.doc);
                        }
                    }
                    feed.committed(&counters);
                }
                Err(e) => {
                    tracing::error!(error = %e, entries, "group commit failed");
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        }
        for reply in flushes {
            let _ = reply.send(());
        }
        if let Some(journal) = backend.journal() {
            journal.step(false).await;
        }
    }
}
