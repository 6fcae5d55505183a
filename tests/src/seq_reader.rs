//! HTTP readers that record the seq of every entry they get (SSE or long polling), to check
//! that each entry arrives once and in order.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::server_support::WAIT;

/// What an HTTP reader ([`SeqReader`]) saw.
#[derive(Debug, Clone, Default)]
pub struct ReaderLog {
    /// The seq of the `sync` it started from.
    pub start: Option<u64>,
    /// The seq of every `delta` event, in the order they came.
    pub seqs: Vec<u64>,
    /// Reconnects, `close` events, refusals: for failure messages.
    pub notes: Vec<String>,
}

/// An HTTP reader of one document on one node, over SSE (`GET /v1/events/{doc}`, resuming by
/// `Last-Event-ID` when its stream ends) or long polling (`GET /v1/updates/{doc}?after=…`),
/// recording the seq of each entry it receives.
#[derive(Debug)]
pub struct SeqReader {
    pub what: String,
    log: Arc<Mutex<ReaderLog>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl SeqReader {
    /// An SSE reader of `doc` on the node at `addr`.
    pub fn sse(addr: SocketAddr, doc: &str) -> SeqReader {
        let log = Arc::new(Mutex::new(ReaderLog::default()));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(sse_loop(addr, doc.to_owned(), log.clone(), stopped));
        SeqReader {
            what: format!("SSE reader on {addr}"),
            log,
            stop,
            task,
        }
    }

    /// A long-polling reader of `doc` on the node at `addr`.
    pub fn long_poll(addr: SocketAddr, doc: &str) -> SeqReader {
        let log = Arc::new(Mutex::new(ReaderLog::default()));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(poll_loop(addr, doc.to_owned(), log.clone(), stopped));
        SeqReader {
            what: format!("long-poll reader on {addr}"),
            log,
            stop,
            task,
        }
    }

    /// What it saw so far.
    pub fn log(&self) -> ReaderLog {
        self.log.lock().expect("reader log").clone()
    }

    /// Waits until its sync arrived; returns the sync's seq.
    pub async fn started(&self) -> u64 {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(start) = self.log().start {
                return start;
            }
            assert!(
                !self.task.is_finished(),
                "{} ended: {:?}",
                self.what,
                self.log()
            );
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} got no sync: {:?}",
                self.what,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (up to `within`) until it has received seq `head` or later, stops it and returns
    /// what it saw (whether or not it got there).
    pub async fn finish(self, head: u64, within: Duration) -> ReaderLog {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let log = self.log();
            let reached = log.seqs.last().copied().or(log.start).unwrap_or(0) >= head;
            if reached || self.task.is_finished() || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await
            && e.is_panic()
        {
            self.log
                .lock()
                .expect("reader log")
                .notes
                .push(format!("the reader panicked: {e}"));
        }
        Arc::try_unwrap(self.log)
            .map(|m| m.into_inner().expect("reader log"))
            .unwrap_or_else(|shared| shared.lock().expect("reader log").clone())
    }
}

fn note(log: &Mutex<ReaderLog>, what: String) {
    log.lock().expect("reader log").notes.push(what);
}

async fn sse_loop(
    addr: SocketAddr,
    doc: String,
    log: Arc<Mutex<ReaderLog>>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let path = format!("/v1/events/{doc}");
    let mut last: Option<u64> = None;
    loop {
        let resume = last.map(|l| l.to_string());
        let headers: Vec<(&str, &str)> = resume
            .as_deref()
            .map(|id| vec![("Last-Event-ID", id)])
            .unwrap_or_default();
        let mut sse = tokio::select! {
            sse = crate::http_support::Sse::open(addr, &path, &headers) => sse,
            _ = stopped.wait_for(|s| *s) => return,
        };
        if sse.status != 200 {
            note(
                &log,
                format!("SSE answered {} (resume {last:?})", sse.status),
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        loop {
            // Keep-alive comments come every 15 s of quiet: a minute without an event is an
            // ended stream as far as this reader is concerned.
            let event = tokio::select! {
                e = sse.next_within(Duration::from_secs(60)) => e,
                _ = stopped.wait_for(|s| *s) => return,
            };
            let Some(event) = event else {
                note(&log, format!("stream ended after {last:?}; resuming"));
                break;
            };
            match event.event.as_str() {
                "sync" => {
                    let mut l = log.lock().expect("reader log");
                    if last.is_none() {
                        l.start = event.id;
                        last = event.id;
                    } else {
                        l.notes
                            .push(format!("a sync at {:?} instead of a resume", event.id));
                        last = event.id;
                    }
                }
                "delta" => {
                    let seq = event.id.expect("a delta event has an id");
                    log.lock().expect("reader log").seqs.push(seq);
                    last = Some(seq);
                }
                "close" => note(&log, format!("close: {}", event.data)),
                _ => {}
            }
        }
    }
}

async fn poll_loop(
    addr: SocketAddr,
    doc: String,
    log: Arc<Mutex<ReaderLog>>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut after: Option<u64> = None;
    loop {
        let path = match after {
            None => format!("/v1/updates/{doc}"),
            Some(a) => format!("/v1/updates/{doc}?after={a}&wait_ms=1000"),
        };
        let answer = tokio::select! {
            a = crate::http_support::send(addr, "GET", &path, &[], b"") => a,
            _ = stopped.wait_for(|s| *s) => return,
        };
        match answer.status {
            200 => {
                let body = answer.json();
                let mut l = log.lock().expect("reader log");
                for e in body["events"].as_array().expect("events") {
                    let seq = e["seq"].as_u64();
                    match e["type"].as_str() {
                        Some("sync") if after.is_none() => l.start = seq,
                        Some("sync") => l.notes.push(format!("a sync at {seq:?} after {after:?}")),
                        Some("delta") => l.seqs.push(seq.expect("a delta event has a seq")),
                        _ => {}
                    }
                }
                after = Some(body["next_after"].as_u64().expect("next_after"));
            }
            204 => {}
            status => {
                let body = String::from_utf8_lossy(&answer.body).into_owned();
                note(
                    &log,
                    format!("poll after {after:?} answered {status}: {body}"),
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
