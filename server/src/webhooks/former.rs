//! The former: from committed entries to `document.changed` events in the outbox.
//!
//! It keeps, per changed document, when the first and the last change not yet formed were seen
//! (from the store's commit feed, or from a rescan). A document's event is due once it has been
//! quiet for `coalesce_interval`, or `max_delay` after its first change, and never sooner than
//! `coalesce_interval` after its previous event. Then, for every enabled endpoint that wants
//! it, the entries after the endpoint's cursor up to the head become one event, written with the
//! cursor's move in one transaction. What is in memory here is only a schedule: after a crash
//! the rescan at start finds every document whose head is past a cursor.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use lattice_engine::DocId;
use tokio_util::sync::CancellationToken;

use super::{DOCUMENT_CHANGED, Inner, event_id, wants};
use crate::clock::now_ms;
use crate::store::Page;
use crate::store::webhooks::{EndpointRow, NewEvent};

/// Documents read per page of a rescan.
const SCAN_PAGE: u32 = 1_000;
/// Log entries read to name a range's authors (the newest of the range).
const AUTHOR_ENTRIES: u32 = 256;
/// Authors named in one payload.
const MAX_AUTHORS: usize = 32;
/// Bytes of one author name kept in a payload (token subjects are not bounded elsewhere), so a
/// payload stays a few KiB at most.
const MAX_AUTHOR_BYTES: usize = 256;
/// Documents formed in one round (one outbox transaction).
const FORM_BATCH: usize = 256;
/// How long the former waits before trying again after a database error.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// When a document's unformed changes were seen.
#[derive(Debug, Clone, Copy)]
struct Pending {
    first_ms: u64,
    last_ms: u64,
    /// Not before this time (a failed round, or the previous event's interval).
    not_before_ms: u64,
}

pub(super) async fn run(inner: Arc<Inner>, shutdown: CancellationToken) {
    let feed = inner.store.commit_feed();
    feed.subscribe();
    let interval_ms = inner.config.coalesce_interval.as_millis() as u64;
    let max_delay_ms = inner.config.max_delay.as_millis() as u64;
    let mut pending: HashMap<DocId, Pending> = HashMap::new();
    let mut last_formed: HashMap<DocId, u64> = HashMap::new();
    let mut next_scan_ms = 0;
    // Whether any enabled endpoint wants `document.changed`, as of the last scan (an endpoint
    // added or enabled wakes a scan). Without one, the feed is drained and nothing is kept.
    let mut any_endpoint = false;
    loop {
        let now = now_ms();
        if now >= next_scan_ms {
            match scan(&inner, &mut pending, now).await {
                Ok(any) => {
                    any_endpoint = any;
                    next_scan_ms =
                        now.saturating_add(inner.config.rescan_interval.as_millis() as u64);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "webhook rescan failed; trying again");
                    next_scan_ms = now + RETRY_AFTER.as_millis() as u64;
                }
            }
        }
        let committed = feed.take();
        if !any_endpoint {
            pending.clear();
        } else if committed.overflowed {
            next_scan_ms = 0;
        } else {
            for doc in committed.heads.into_keys() {
                touch(&mut pending, doc, now);
            }
        }
        let due_at = |last_formed: &HashMap<DocId, u64>, doc: &DocId, p: &Pending| {
            let quiet = (p.last_ms.saturating_add(interval_ms))
                .min(p.first_ms.saturating_add(max_delay_ms));
            let spaced = last_formed
                .get(doc)
                .map_or(0, |t| t.saturating_add(interval_ms));
            quiet.max(spaced).max(p.not_before_ms)
        };
        let due: Vec<DocId> = pending
            .iter()
            .filter(|(doc, p)| due_at(&last_formed, doc, p) <= now)
            .map(|(doc, _)| doc.clone())
            .take(FORM_BATCH)
            .collect();
        if !due.is_empty() {
            match form(&inner, &due, now).await {
                Ok(()) => {
                    for doc in due {
                        pending.remove(&doc);
                        last_formed.insert(doc, now);
                    }
                    inner.deliver_wake.notify_one();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "forming webhook events failed; trying again");
                    for doc in &due {
                        if let Some(p) = pending.get_mut(doc) {
                            p.not_before_ms = now + RETRY_AFTER.as_millis() as u64;
                        }
                    }
                }
            }
            continue;
        }
        last_formed.retain(|_, t| t.saturating_add(interval_ms) > now);
        let next_due = pending
            .iter()
            .map(|(doc, p)| due_at(&last_formed, doc, p))
            .min()
            .unwrap_or(u64::MAX)
            .min(next_scan_ms);
        let wait = Duration::from_millis(next_due.saturating_sub(now).min(3_600_000));
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = feed.changed() => {}
            () = inner.rescan_wake.notified() => next_scan_ms = 0,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

fn touch(pending: &mut HashMap<DocId, Pending>, doc: DocId, now: u64) {
    pending
        .entry(doc)
        .and_modify(|p| p.last_ms = now)
        .or_insert(Pending {
            first_ms: now,
            last_ms: now,
            not_before_ms: 0,
        });
}

/// Endpoints that form `document.changed` events now.
fn changed_endpoints(rows: Vec<EndpointRow>) -> Vec<EndpointRow> {
    rows.into_iter()
        .filter(|ep| {
            ep.disabled_at_ms.is_none() && ep.event_types.split(',').any(|t| t == DOCUMENT_CHANGED)
        })
        .collect()
}

/// Compares every document's head with every endpoint's cursor and schedules those behind.
/// Returns whether any endpoint wants `document.changed` events.
async fn scan(
    inner: &Inner,
    pending: &mut HashMap<DocId, Pending>,
    now: u64,
) -> Result<bool, crate::store::ReadError> {
    let endpoints = changed_endpoints(inner.store.webhook_endpoints().await?);
    if endpoints.is_empty() {
        return Ok(false);
    }
    let mut cursors: Vec<HashMap<String, u64>> = Vec::with_capacity(endpoints.len());
    for ep in &endpoints {
        cursors.push(
            inner
                .store
                .webhook_cursors(&ep.id)
                .await?
                .into_iter()
                .collect(),
        );
    }
    let mut page = Page {
        after: None,
        limit: SCAN_PAGE,
    };
    loop {
        let docs = inner.store.list_documents("", &page).await?;
        for meta in &docs {
            let behind = endpoints.iter().zip(&cursors).any(|(ep, cursors)| {
                wants(ep, DOCUMENT_CHANGED, &meta.id)
                    && meta.head_seq > cursors.get(meta.id.as_str()).copied().unwrap_or(0)
            });
            if behind && !pending.contains_key(&meta.id) {
                touch(pending, meta.id.clone(), now);
            }
        }
        match docs.last() {
            Some(last) if docs.len() as u32 == SCAN_PAGE => page.after = Some(last.id.clone()),
            _ => return Ok(true),
        }
    }
}

/// Forms the events of `docs` for every endpoint behind on them, in one outbox transaction.
async fn form(inner: &Inner, docs: &[DocId], now: u64) -> Result<(), crate::store::ReadError> {
    let endpoints = changed_endpoints(inner.store.webhook_endpoints().await?);
    if endpoints.is_empty() {
        return Ok(());
    }
    let heads = inner.store.heads(docs).await?;
    let ids: Vec<&str> = heads.iter().map(|h| h.doc.as_str()).collect();
    let mut cursors = Vec::with_capacity(endpoints.len());
    for ep in &endpoints {
        cursors.push(inner.store.webhook_cursors_of(&ep.id, &ids).await?);
    }
    let mut events = Vec::new();
    for head in &heads {
        let doc = &head.doc;
        let mut authors_of: HashMap<u64, Vec<String>> = HashMap::new();
        for (ep, cursors) in endpoints
            .iter()
            .zip(&cursors)
            .filter(|(ep, _)| wants(ep, DOCUMENT_CHANGED, doc))
        {
            let cursor = cursors.get(doc.as_str()).copied().unwrap_or(0);
            if head.head_seq <= cursor {
                continue;
            }
            let first = cursor.saturating_add(1);
            let authors = match authors_of.get(&first) {
                Some(a) => a.clone(),
                None => {
                    let a = authors(inner, doc, first, head.head_seq).await;
                    authors_of.insert(first, a.clone());
                    a
                }
            };
            let data = serde_json::json!({
                "document": doc.as_str(),
                "first_seq": first,
                "last_seq": head.head_seq,
                "authors": authors,
                "url": inner.state_url(doc),
            });
            events.push(NewEvent {
                id: event_id(
                    &ep.id,
                    doc.as_str(),
                    DOCUMENT_CHANGED,
                    first,
                    head.head_seq,
                    0,
                ),
                endpoint_id: ep.id.clone(),
                doc_id: doc.as_str().to_owned(),
                event_type: DOCUMENT_CHANGED.to_owned(),
                first_seq: first,
                last_seq: head.head_seq,
                payload: inner.payload(DOCUMENT_CHANGED, now, data),
                created_at_ms: now,
                cursor: Some((cursor, head.head_seq)),
            });
        }
    }
    let written = inner.store.webhook_form(&events).await?;
    inner.metrics.webhooks.count_events(written as u64);
    Ok(())
}

/// The distinct authors of the newest entries of `first..=last` (at most [`AUTHOR_ENTRIES`]
/// read, [`MAX_AUTHORS`] named). Empty if the log cannot be read there (retention dropped it):
/// the authors are a convenience, the seq range is the record.
async fn authors(inner: &Inner, doc: &DocId, first: u64, last: u64) -> Vec<String> {
    let from = first.max(last.saturating_sub(u64::from(AUTHOR_ENTRIES) - 1));
    let entries = match inner.store.read_log(doc, from, AUTHOR_ENTRIES).await {
        Ok(entries) => entries,
        Err(e) => {
            tracing::debug!(doc = %doc, error = %e, "webhook: authors not read");
            return Vec::new();
        }
    };
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for entry in entries.iter().filter(|e| e.seq <= last) {
        if let Some(author) = &entry.author
            && out.len() < MAX_AUTHORS
        {
            let mut cut = author.len().min(MAX_AUTHOR_BYTES);
            while !author.is_char_boundary(cut) {
                cut -= 1;
            }
            let name = &author[..cut];
            if seen.insert(name.to_owned()) {
                out.push(name.to_owned());
            }
        }
    }
    out
}
