//! The timeline of a document by author session, newest first, for the admin UI: one row per
//! session however many entries it holds, so a document typed keystroke by keystroke (hundreds
//! of thousands of entries) is browsable. A session's entries, with their summaries, come from
//! the history pages ([`super::history`]) when the UI opens it.
//!
//! Sessions here read only the log's metadata (author, time, size): nothing is replayed, so a
//! page costs the log reads of its entries, bounded by [`MAX_SCAN`].

use lattice_engine::DocId;
use serde::{Deserialize, Serialize};

use super::{HistoryError, hlc_unix_ms, meta, rfc3339_ms};
use crate::store::Store;

/// Sessions on a page by default, and at most.
pub const DEFAULT_SESSIONS_LIMIT: u32 = 50;
pub const MAX_SESSIONS_LIMIT: u32 = 200;
/// Most log entries one page reads. A session longer than this is cut into rows of at most
/// this many entries (each row still one author's consecutive entries).
pub const MAX_SCAN: u64 = 100_000;
/// Log entries read at a time.
const CHUNK: u64 = 5_000;

/// One author session: consecutive entries by one author, each at most the session gap after
/// the one before.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineSession {
    pub author: Option<String>,
    pub from_seq: u64,
    pub to_seq: u64,
    pub from_ms: u64,
    pub to_ms: u64,
    pub from: String,
    pub to: String,
    pub entries: u64,
    pub bytes: u64,
}

/// A page of sessions, newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelinePage {
    pub doc: String,
    pub head_seq: u64,
    pub log_start_seq: u64,
    pub deleted: bool,
    pub sessions: Vec<TimelineSession>,
    pub session_gap_ms: u64,
    /// Pass as `before` for the next (older) page; `None` at the start of the log.
    pub next_before: Option<u64>,
}

/// Which sessions: those of entries with `seq < before` (default: every entry), at most `limit`.
#[derive(Clone, Copy, Debug)]
pub struct TimelineQuery {
    pub before: Option<u64>,
    pub limit: u32,
    pub session_gap_ms: u64,
}

/// Groups entries read newest first into sessions, newest first.
#[derive(Debug)]
struct Grouper {
    gap_ms: u64,
    sessions: Vec<TimelineSession>,
}

impl Grouper {
    /// Takes the entry before (older than) everything taken so far.
    fn take(&mut self, seq: u64, author: Option<&str>, time_ms: u64, bytes: u64) {
        if let Some(s) = self.sessions.last_mut()
            && s.author.as_deref() == author
            && s.from_seq == seq + 1
            && s.from_ms.abs_diff(time_ms) <= self.gap_ms
        {
            s.from_seq = seq;
            s.from_ms = s.from_ms.min(time_ms);
            s.to_ms = s.to_ms.max(time_ms);
            s.entries += 1;
            s.bytes += bytes;
            return;
        }
        self.sessions.push(TimelineSession {
            author: author.map(str::to_owned),
            from_seq: seq,
            to_seq: seq,
            from_ms: time_ms,
            to_ms: time_ms,
            from: String::new(),
            to: String::new(),
            entries: 1,
            bytes,
        });
    }
}

/// A page of `doc`'s sessions, newest first.
pub async fn timeline(
    store: &Store,
    doc: &DocId,
    query: TimelineQuery,
) -> Result<TimelinePage, HistoryError> {
    let meta = meta(store, doc).await?;
    let limit = query.limit.clamp(1, MAX_SESSIONS_LIMIT) as usize;
    let first = meta.log_start_seq + 1;
    let mut end = query
        .before
        .map_or(meta.head_seq, |b| b.saturating_sub(1))
        .min(meta.head_seq);
    let mut grouper = Grouper {
        gap_ms: query.session_gap_ms,
        sessions: Vec::new(),
    };
    let mut scanned = 0;
    // One session more than asked for is read, so that the last one returned is whole.
    'read: while end >= first && scanned < MAX_SCAN {
        let from = end.saturating_sub(CHUNK - 1).max(first);
        let count = u32::try_from(end - from + 1).unwrap_or(u32::MAX);
        let log = store.read_log(doc, from, count).await?;
        for e in log.iter().rev() {
            let time_ms = hlc_unix_ms(e.hlc).unwrap_or(e.committed_at_ms);
            grouper.take(e.seq, e.author.as_deref(), time_ms, e.byte_size);
            scanned += 1;
            if grouper.sessions.len() > limit {
                break 'read;
            }
        }
        end = from - 1;
    }
    let mut sessions = grouper.sessions;
    let next_before = if sessions.len() > limit {
        sessions.truncate(limit);
        sessions.last().map(|s| s.from_seq)
    } else {
        // Cut by the scan bound, or the log's start.
        sessions
            .last()
            .map(|s| s.from_seq)
            .filter(|seq| *seq > first)
    };
    for s in &mut sessions {
        s.from = rfc3339_ms(s.from_ms);
        s.to = rfc3339_ms(s.to_ms);
    }
    Ok(TimelinePage {
        doc: doc.as_str().to_owned(),
        head_seq: meta.head_seq,
        log_start_seq: meta.log_start_seq,
        deleted: meta.is_deleted(),
        sessions,
        session_gap_ms: query.session_gap_ms,
        next_before,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_newest_first_group_by_author_gap_and_adjacency() {
        let mut g = Grouper {
            gap_ms: 10,
            sessions: Vec::new(),
        };
        // seq, author, time
        for (seq, author, t) in [
            (9, "b", 100),
            (8, "b", 95),
            (7, "a", 94),
            (6, "a", 90),
            (5, "a", 70), // 20 ms before the next: a new session
            (4, "b", 69),
        ] {
            g.take(seq, Some(author), t, 1);
        }
        let got: Vec<(u64, u64, u64)> = g
            .sessions
            .iter()
            .map(|s| (s.from_seq, s.to_seq, s.entries))
            .collect();
        assert_eq!(got, vec![(8, 9, 2), (6, 7, 2), (5, 5, 1), (4, 4, 1)]);
        assert_eq!((g.sessions[0].from_ms, g.sessions[0].to_ms), (95, 100));
    }
}
