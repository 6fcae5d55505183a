//! Document history for admins, on top of the [`Store`]: document listings, pages of the update
//! log with a human summary per entry and sessions, the content at any version, diffs between
//! versions and exports. The HTTP API (`/api/admin/…`, docs/admin-api.md) and the offline
//! `lattice admin --database-url` commands both call these functions, so they answer alike.
//!
//! Summaries come from stepping a document through the page: the state before the page's first
//! entry is rebuilt once ([`Store::state_at`]: nearest checkpoint plus replay), then each entry
//! is applied and the JSON views before and after it are compared
//! ([`lattice_engine::history::summarize`]). A page never replays from the start of the log.
//!
//! The CPU-heavy parts (applying deltas, rendering views, diffing) run on tokio's blocking pool.

pub mod timeline;

use lattice_engine::history::{ChangeSummary, VersionDiff, compare, summarize};
use lattice_engine::{DocId, Document, NTP64, ReplicaId};
use serde::{Deserialize, Serialize};

use crate::auth::DocPattern;
use crate::store::{DeltaDamage, DocMeta, Page, ReadError, Store};

/// Default and largest number of documents in one listing page.
pub const DEFAULT_LIST_LIMIT: u32 = 100;
pub const MAX_LIST_LIMIT: u32 = 1_000;
/// Default and largest number of log entries in one history page.
pub const DEFAULT_HISTORY_LIMIT: u32 = 100;
pub const MAX_HISTORY_LIMIT: u32 = 500;
/// Default gap that ends a session: consecutive entries by one author less than this apart
/// belong to one session.
pub const DEFAULT_SESSION_GAP_MS: u64 = 5 * 60 * 1_000;
/// How many store pages a filtered listing reads at most before it returns what it has (with
/// a cursor), so a token that covers few documents cannot make one request scan everything.
const MAX_LIST_SCAN_PAGES: usize = 10;

/// Why a history request failed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(transparent)]
    Store(#[from] ReadError),
    /// The document was never written.
    #[error("no such document")]
    NotFound,
    /// A version outside `log_start_seq..=head_seq` (or `from > to` in a diff).
    #[error("{0}")]
    BadVersion(String),
    /// The blocking task running the computation failed.
    #[error("history computation failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// RFC 3339 (UTC, milliseconds) for a Unix time in milliseconds.
pub fn rfc3339_ms(unix_ms: u64) -> String {
    let secs = unix_ms / 1_000;
    let ms = unix_ms % 1_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3_600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Unix milliseconds of a stored HLC time (`None` for 0, "no stamp").
pub fn hlc_unix_ms(hlc: u64) -> Option<u64> {
    (hlc != 0).then(|| u64::try_from(NTP64(hlc).to_duration().as_millis()).unwrap_or(u64::MAX))
}

/// One document in a listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocSummary {
    pub id: String,
    /// Total size of every update ever appended, in bytes.
    pub size_bytes: u64,
    /// Number of updates ever appended (the head sequence number).
    pub updates: u64,
    pub first_change_ms: u64,
    pub first_change: String,
    pub last_change_ms: u64,
    pub last_change: String,
    pub deleted: bool,
    pub deleted_at_ms: Option<u64>,
    /// Connections subscribed right now (`None` when read offline from the database).
    pub live_subscribers: Option<usize>,
    /// Entries up to this sequence number were dropped by retention (0 = full history).
    pub log_start_seq: u64,
}

impl DocSummary {
    pub fn new(meta: &DocMeta, live_subscribers: Option<usize>) -> Self {
        Self {
            id: meta.id.as_str().to_owned(),
            size_bytes: meta.byte_count,
            updates: meta.head_seq,
            first_change_ms: meta.created_at_ms,
            first_change: rfc3339_ms(meta.created_at_ms),
            last_change_ms: meta.updated_at_ms,
            last_change: rfc3339_ms(meta.updated_at_ms),
            deleted: meta.is_deleted(),
            deleted_at_ms: meta.deleted_at_ms,
            live_subscribers,
            log_start_seq: meta.log_start_seq,
        }
    }
}

/// A page of documents; pass `next_after` as `after` for the next one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocList {
    pub documents: Vec<DocSummary>,
    pub next_after: Option<String>,
}

/// Which documents to list.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    pub prefix: String,
    pub after: Option<DocId>,
    pub limit: u32,
    pub include_deleted: bool,
}

/// Lists the documents `scope` covers (a token's patterns; `[DocPattern::All]` offline), in id
/// order. `live` counts subscribers.
///
/// Only ids inside `scope` are ever read: each pattern is intersected with the query's `prefix`
/// and read as its own range, so neither the documents returned, nor `next_after`, nor whether
/// a `prefix` or `after` finds anything depends on a document outside `scope`. At most
/// `MAX_LIST_SCAN_PAGES` (10) full store pages are read per call (deleted documents may fill them
/// when `include_deleted` is off); then the page returns what it has, with a cursor.
pub async fn list_documents(
    store: &Store,
    query: &ListQuery,
    scope: &[DocPattern],
    live: impl Fn(&DocId) -> Option<usize>,
) -> Result<DocList, HistoryError> {
    let limit = query.limit.clamp(1, MAX_LIST_LIMIT);
    let mut after = query.after.clone();
    // The last id read, always inside `scope`: the only thing a cursor may name.
    let mut last_read: Option<DocId> = None;
    let mut documents = Vec::new();
    let mut full_pages = 0;
    for range in list_ranges(scope, &query.prefix) {
        if after.as_ref().is_some_and(|a| range.ends_by(a.as_str())) {
            continue;
        }
        loop {
            let (metas, more) = match &range {
                ListRange::Exact(id) => (store.document(id).await?.into_iter().collect(), false),
                ListRange::Prefix(prefix) => {
                    if full_pages == MAX_LIST_SCAN_PAGES {
                        // Only full pages count, so something was read: `last_read` is set.
                        return Ok(DocList {
                            documents,
                            next_after: last_read.map(|d| d.as_str().to_owned()),
                        });
                    }
                    let page = store
                        .list_documents(
                            prefix,
                            &Page {
                                after: after.clone(),
                                limit,
                            },
                        )
                        .await?;
                    let full = page.len() as u32 == limit;
                    full_pages += usize::from(full);
                    (page, full)
                }
            };
            for meta in metas {
                after = Some(meta.id.clone());
                last_read = Some(meta.id.clone());
                if query.include_deleted || !meta.is_deleted() {
                    documents.push(DocSummary::new(&meta, live(&meta.id)));
                    if documents.len() as u32 == limit {
                        return Ok(DocList {
                            documents,
                            next_after: Some(meta.id.as_str().to_owned()),
                        });
                    }
                }
            }
            if !more {
                break;
            }
        }
    }
    Ok(DocList {
        documents,
        next_after: None,
    })
}

/// A part of the id space a listing reads.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ListRange {
    /// Every id that starts with this (any string, not only a pattern's `team-a/`).
    Prefix(String),
    Exact(DocId),
}

impl ListRange {
    fn key(&self) -> &str {
        match self {
            ListRange::Prefix(p) => p,
            ListRange::Exact(id) => id.as_str(),
        }
    }

    /// Every id in the range is at or before `after` (bytewise).
    fn ends_by(&self, after: &str) -> bool {
        match self {
            ListRange::Exact(id) => id.as_str() <= after,
            ListRange::Prefix(p) => after > p.as_str() && !after.starts_with(p.as_str()),
        }
    }

    /// Every id in `other` is in `self`.
    fn contains(&self, other: &ListRange) -> bool {
        match (self, other) {
            (ListRange::Prefix(p), other) => other.key().starts_with(p.as_str()),
            (ListRange::Exact(a), ListRange::Exact(b)) => a == b,
            (ListRange::Exact(_), ListRange::Prefix(_)) => false,
        }
    }
}

/// The ranges a listing reads: each pattern intersected with `prefix`, the ones inside another
/// dropped, sorted. Two ranges left are then disjoint and ordered as their ids are: neither key
/// starts with the other's prefix, so they differ at some byte that orders every id in them
/// alike (or an exact id is a proper prefix of a prefix, and so before all its ids).
fn list_ranges(scope: &[DocPattern], prefix: &str) -> Vec<ListRange> {
    let candidates: Vec<ListRange> = scope
        .iter()
        .filter_map(|pattern| match pattern {
            DocPattern::All => Some(ListRange::Prefix(prefix.to_owned())),
            DocPattern::Prefix(p) if prefix.starts_with(p.as_str()) => {
                Some(ListRange::Prefix(prefix.to_owned()))
            }
            DocPattern::Prefix(p) if p.starts_with(prefix) => Some(ListRange::Prefix(p.clone())),
            DocPattern::Prefix(_) => None,
            DocPattern::Exact(id) => id
                .as_str()
                .starts_with(prefix)
                .then(|| ListRange::Exact(id.clone())),
        })
        .collect();
    let mut ranges: Vec<ListRange> = Vec::with_capacity(candidates.len());
    for (i, range) in candidates.iter().enumerate() {
        // Of two equal ranges the first is kept.
        let inside = candidates
            .iter()
            .enumerate()
            .any(|(j, other)| j != i && other.contains(range) && (other != range || j < i));
        if !inside {
            ranges.push(range.clone());
        }
    }
    ranges.sort_by(|a, b| a.key().cmp(b.key()));
    ranges
}

/// One log entry, described.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub seq: u64,
    /// When the change was made, from its HLC stamp (the commit time if it has none).
    pub time_ms: u64,
    pub time: String,
    pub committed_at_ms: u64,
    /// The token subject that sent the change (`null` without authentication).
    pub author: Option<String>,
    /// The replica (Yjs client id) that made it.
    pub replica: u32,
    pub byte_size: u64,
    /// One line for people: `+12 −3 chars in "body"; counter likes +1; title := "Draft"`.
    pub summary: String,
    pub changes: ChangeSummary,
}

/// Consecutive entries by one author, each less than the session gap after the previous one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistorySession {
    pub author: Option<String>,
    pub from_seq: u64,
    pub to_seq: u64,
    pub from_ms: u64,
    pub to_ms: u64,
    pub from: String,
    pub to: String,
    pub entries: u64,
    pub chars_inserted: u64,
    pub chars_deleted: u64,
    pub bytes: u64,
}

/// A page of a document's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryPage {
    pub doc: String,
    pub head_seq: u64,
    pub log_start_seq: u64,
    pub deleted: bool,
    pub entries: Vec<HistoryEntry>,
    /// The page's entries grouped into sessions (a session may continue on the next page).
    pub sessions: Vec<HistorySession>,
    pub session_gap_ms: u64,
    /// Pass as `after` for the next page; `None` at the head.
    pub next_after: Option<u64>,
}

/// Which part of the history to read: entries with `seq > after`, at most `limit`.
#[derive(Clone, Copy, Debug)]
pub struct HistoryQuery {
    pub after: u64,
    pub limit: u32,
    pub session_gap_ms: u64,
}

impl Default for HistoryQuery {
    fn default() -> Self {
        Self {
            after: 0,
            limit: DEFAULT_HISTORY_LIMIT,
            session_gap_ms: DEFAULT_SESSION_GAP_MS,
        }
    }
}

async fn meta(store: &Store, doc: &DocId) -> Result<DocMeta, HistoryError> {
    store.document(doc).await?.ok_or(HistoryError::NotFound)
}

fn check_version(meta: &DocMeta, seq: u64) -> Result<(), HistoryError> {
    if seq > meta.head_seq {
        return Err(HistoryError::BadVersion(format!(
            "version {seq} is past the head ({})",
            meta.head_seq
        )));
    }
    if seq < meta.log_start_seq {
        return Err(HistoryError::BadVersion(format!(
            "versions before {} were dropped by retention",
            meta.log_start_seq
        )));
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, HistoryError> + Send + 'static,
) -> Result<T, HistoryError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(HistoryError::Task)?
}

/// A page of `doc`'s history, described entry by entry, with sessions.
pub async fn history(
    store: &Store,
    doc: &DocId,
    query: HistoryQuery,
    replica: ReplicaId,
) -> Result<HistoryPage, HistoryError> {
    let meta = meta(store, doc).await?;
    let limit = query.limit.clamp(1, MAX_HISTORY_LIMIT);
    let from = query.after.max(meta.log_start_seq) + 1;
    let mut page = HistoryPage {
        doc: doc.as_str().to_owned(),
        head_seq: meta.head_seq,
        log_start_seq: meta.log_start_seq,
        deleted: meta.is_deleted(),
        entries: Vec::new(),
        sessions: Vec::new(),
        session_gap_ms: query.session_gap_ms,
        next_after: None,
    };
    if from > meta.head_seq {
        return Ok(page);
    }
    let log = store.read_log(doc, from, limit).await?;
    let start = store.state_at(doc, from - 1, replica).await?;
    let doc_for_task = doc.clone();
    let entries = blocking(move || {
        let doc = doc_for_task;
        let mut state = start;
        let mut before = state.to_json();
        let mut out = Vec::with_capacity(log.len());
        for e in &log {
            let delta = e.delta(&doc)?;
            state.apply(&delta).map_err(|err| ReadError::CorruptDelta {
                doc: doc.clone(),
                seq: e.seq,
                damage: DeltaDamage::Apply(err),
            })?;
            let after = state.to_json();
            let changes = summarize(&before, &after);
            before = after;
            let time_ms = hlc_unix_ms(e.hlc).unwrap_or(e.committed_at_ms);
            out.push(HistoryEntry {
                seq: e.seq,
                time_ms,
                time: rfc3339_ms(time_ms),
                committed_at_ms: e.committed_at_ms,
                author: e.author.clone(),
                replica: e.replica,
                byte_size: e.byte_size,
                summary: changes.describe(),
                changes,
            });
        }
        Ok(out)
    })
    .await?;
    page.sessions = sessions(&entries, query.session_gap_ms);
    page.next_after = entries.last().map(|e| e.seq).filter(|s| *s < meta.head_seq);
    page.entries = entries;
    Ok(page)
}

/// Groups consecutive entries by author and time gap.
pub fn sessions(entries: &[HistoryEntry], gap_ms: u64) -> Vec<HistorySession> {
    let mut out: Vec<HistorySession> = Vec::new();
    for e in entries {
        let (ins, del) = e
            .changes
            .texts
            .values()
            .fold((0, 0), |(i, d), t| (i + t.inserted, d + t.deleted));
        match out.last_mut() {
            Some(s)
                if s.author == e.author
                    && e.time_ms.abs_diff(s.to_ms) <= gap_ms
                    && s.to_seq + 1 == e.seq =>
            {
                s.to_seq = e.seq;
                s.from_ms = s.from_ms.min(e.time_ms);
                s.to_ms = s.to_ms.max(e.time_ms);
                s.from = rfc3339_ms(s.from_ms);
                s.to = rfc3339_ms(s.to_ms);
                s.entries += 1;
                s.chars_inserted += ins;
                s.chars_deleted += del;
                s.bytes += e.byte_size;
            }
            _ => out.push(HistorySession {
                author: e.author.clone(),
                from_seq: e.seq,
                to_seq: e.seq,
                from_ms: e.time_ms,
                to_ms: e.time_ms,
                from: e.time.clone(),
                to: e.time.clone(),
                entries: 1,
                chars_inserted: ins,
                chars_deleted: del,
                bytes: e.byte_size,
            }),
        }
    }
    out
}

/// The content of a document right after update `seq`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Content {
    pub doc: String,
    pub seq: u64,
    pub head_seq: u64,
    pub deleted: bool,
    /// `{"texts", "maps", "arrays", "xml", "counters", "registers"}`.
    pub content: serde_json::Value,
}

/// The document as it was right after update `seq` (`None` = the head).
pub async fn document_at(
    store: &Store,
    doc: &DocId,
    seq: Option<u64>,
    replica: ReplicaId,
) -> Result<(DocMeta, u64, Document), HistoryError> {
    let meta = meta(store, doc).await?;
    let seq = seq.unwrap_or(meta.head_seq);
    check_version(&meta, seq)?;
    let document = store.state_at(doc, seq, replica).await?;
    Ok((meta, seq, document))
}

/// The JSON view of a document at `seq` (`None` = the head).
pub async fn content(
    store: &Store,
    doc: &DocId,
    seq: Option<u64>,
    replica: ReplicaId,
) -> Result<Content, HistoryError> {
    let (meta, seq, document) = document_at(store, doc, seq, replica).await?;
    let content = blocking(move || Ok(document.to_json())).await?;
    Ok(Content {
        doc: doc.as_str().to_owned(),
        seq,
        head_seq: meta.head_seq,
        deleted: meta.is_deleted(),
        content,
    })
}

/// What differs between two versions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Diff {
    pub doc: String,
    pub from: u64,
    pub to: u64,
    #[serde(flatten)]
    pub diff: VersionDiff,
}

/// The diff from version `from` to version `to` (`to` may be lower: then it reads backwards).
pub async fn diff(
    store: &Store,
    doc: &DocId,
    from: u64,
    to: u64,
    replica: ReplicaId,
) -> Result<Diff, HistoryError> {
    let meta = meta(store, doc).await?;
    check_version(&meta, from)?;
    check_version(&meta, to)?;
    let a = store.state_at(doc, from, replica).await?;
    let b = store.state_at(doc, to, replica).await?;
    let diff = blocking(move || Ok(compare(&a.to_json(), &b.to_json()))).await?;
    Ok(Diff {
        doc: doc.as_str().to_owned(),
        from,
        to,
        diff,
    })
}

/// The whole document at `seq` as one Yjs update (v1), which any Yjs client can apply.
pub async fn export_yjs(
    store: &Store,
    doc: &DocId,
    seq: Option<u64>,
    replica: ReplicaId,
) -> Result<Vec<u8>, HistoryError> {
    let (_, _, document) = document_at(store, doc, seq, replica).await?;
    blocking(move || Ok(document.encode_yjs())).await
}

/// What a restore did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreOutcome {
    pub doc: String,
    /// The version the document was brought back to.
    pub restored_to: u64,
    /// The sequence number of the new update (`None` if nothing differed).
    pub seq: Option<u64>,
    pub author: Option<String>,
    #[serde(flatten)]
    pub report: lattice_engine::RestoreReport,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, author: &str, time_ms: u64) -> HistoryEntry {
        HistoryEntry {
            seq,
            time_ms,
            time: rfc3339_ms(time_ms),
            committed_at_ms: time_ms,
            author: Some(author.to_owned()),
            replica: 1,
            byte_size: 10,
            summary: String::new(),
            changes: ChangeSummary::default(),
        }
    }

    #[test]
    fn sessions_split_on_author_and_gap() {
        let minute = 60_000;
        let entries = [
            entry(1, "a", 0),
            entry(2, "a", 4 * minute),
            entry(3, "a", 10 * minute),
            entry(4, "b", 10 * minute),
            entry(5, "a", 11 * minute),
        ];
        let got: Vec<(u64, u64, u64)> = sessions(&entries, 5 * minute)
            .iter()
            .map(|s| (s.from_seq, s.to_seq, s.entries))
            .collect();
        assert_eq!(got, vec![(1, 2, 2), (3, 3, 1), (4, 4, 1), (5, 5, 1)]);
        assert_eq!(sessions(&entries, 60 * minute).len(), 3);
    }

    fn ranges(patterns: &[&str], prefix: &str) -> Vec<String> {
        let scope: Vec<DocPattern> = patterns
            .iter()
            .map(|p| DocPattern::parse(p).expect("pattern"))
            .collect();
        list_ranges(&scope, prefix)
            .iter()
            .map(|r| match r {
                ListRange::Prefix(p) => format!("{p}*"),
                ListRange::Exact(id) => id.as_str().to_owned(),
            })
            .collect()
    }

    #[test]
    fn listing_ranges_stay_inside_the_patterns_without_overlaps() {
        assert_eq!(ranges(&["*"], ""), ["*"]);
        assert_eq!(ranges(&["*", "team-a/*"], "team-"), ["team-*"]);
        assert_eq!(ranges(&["team-a/*"], "team-b"), Vec::<String>::new());
        assert_eq!(ranges(&["team-a/*"], "team-"), ["team-a/*"]);
        assert_eq!(ranges(&["team-a/*"], "team-a/x/"), ["team-a/x/*"]);
        assert_eq!(
            ranges(
                &["team-c/z", "team-a/2", "team-a/*", "team-a", "team-a/*"],
                ""
            ),
            ["team-a", "team-a/*", "team-c/z"]
        );
        assert_eq!(ranges(&["a/b/*", "a/*", "a/bc"], "a/b"), ["a/b*"]);
        assert_eq!(ranges(&["x", "x"], "x"), ["x"]);
        assert_eq!(ranges(&["x"], "y"), Vec::<String>::new());
        // Ends: an exact id at or before the cursor, a prefix once the cursor passed it.
        assert!(ListRange::Exact(DocId::new("b").expect("id")).ends_by("b"));
        assert!(!ListRange::Exact(DocId::new("b").expect("id")).ends_by("a"));
        let p = ListRange::Prefix("team-a/".into());
        assert!(!p.ends_by("team-a/zzz") && !p.ends_by("team-") && p.ends_by("team-b"));
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_767_225_600_123), "2026-01-01T00:00:00.123Z");
    }
}
