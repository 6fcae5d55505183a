//! Durable webhooks (docs/webhooks.md): endpoints receive signed `document.*` events, at least
//! once, driven from the log.
//!
//! Two tasks per server, both apart from every room and connection:
//! - the **former** (`former.rs`) learns from the store's commit feed which documents changed,
//!   coalesces per document (an event at most once per `coalesce_interval`, at the latest
//!   `max_delay` after the first change), and turns the entries after each endpoint's cursor into
//!   one `document.changed` event, written to the outbox (`webhook_events`) in the same
//!   transaction that moves the cursor. It rescans every document against the cursors at start
//!   and every `rescan_interval`, so what a crash left unformed is formed after the restart.
//! - the **deliverer** (`deliver.rs`) sends due outbox events, signed as Standard Webhooks
//!   (`sign.rs`), through an HTTP client whose resolver refuses internal addresses (`ssrf.rs`),
//!   with bounded concurrency (overall and per endpoint) and a timeout, and records each
//!   attempt: delivered, retried after the schedule's next delay (with jitter), or given up.
//!
//! **Invariant:** the commit path does no webhook work beyond noting the changed documents
//! in a bounded in-memory set (`store::changes`); a slow or dead endpoint holds only the
//! deliverer's slots, never a room, a connection or the group committer.
//! **Invariant:** an event's id is fixed when it is written to the outbox (derived from the
//! endpoint, document, type and seq range), so every redelivery, after a crash too, carries the
//! same id; receivers dedupe on it.

mod deliver;
mod former;
pub mod sign;
pub mod ssrf;

use std::sync::Arc;
use std::time::Duration;

use lattice_engine::DocId;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::auth::DocPattern;
use crate::clock::now_ms;
use crate::metrics::Metrics;
use crate::store::webhooks::{EndpointRow, EventRow, NewEvent};
use crate::store::{DatabaseError, Store};

/// Entries were committed to a document (coalesced).
pub const DOCUMENT_CHANGED: &str = "document.changed";
/// An administrator soft-deleted a document.
pub const DOCUMENT_DELETED: &str = "document.deleted";
/// An administrator restored a document to an earlier version (a new entry in its log).
pub const DOCUMENT_RESTORED: &str = "document.restored";
/// An administrator undid a soft delete.
pub const DOCUMENT_UNDELETED: &str = "document.undeleted";
/// Every event type, in the order the docs list them.
pub const EVENT_TYPES: [&str; 4] = [
    DOCUMENT_CHANGED,
    DOCUMENT_DELETED,
    DOCUMENT_RESTORED,
    DOCUMENT_UNDELETED,
];

/// The default retry schedule: the delays after the first attempt, then after each retry
/// (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h: eight attempts over about 28 hours).
pub const DEFAULT_RETRY_SCHEDULE: [Duration; 7] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];

/// How webhooks behave. Every field has a documented default ([`WebhookConfig::default`]).
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// Run the former and the deliverer (default true). The admin API works either way.
    pub enabled: bool,
    /// At most one `document.changed` per endpoint and document per this interval; also how
    /// long a document must be quiet before its event is formed (default 2 s).
    pub coalesce_interval: Duration,
    /// The longest a change waits for its event under continuous edits (default 10 s).
    pub max_delay: Duration,
    /// Delays before each retry ([`DEFAULT_RETRY_SCHEDULE`]); after the last one fails, the
    /// event is given up.
    pub retry_schedule: Vec<Duration>,
    /// A delivery counts only if a 2xx answer arrives within this time (default 15 s).
    pub timeout: Duration,
    /// Deliveries in flight at once, over all endpoints (default 16).
    pub max_concurrency: usize,
    /// Deliveries in flight at once to one endpoint (default 4).
    pub max_per_endpoint: usize,
    /// An endpoint whose attempts all failed for this long is disabled (default 5 days).
    pub disable_after: Duration,
    /// Allow targets on loopback, private, link-local and metadata addresses (default false).
    pub allow_private: bool,
    /// The server's public base URL, for the links in payloads (`{public_url}/v1/state/{doc}`);
    /// default: the listening address.
    pub public_url: Option<String>,
    /// How long the previous secret keeps signing after a rotation (default 24 h).
    pub secret_overlap: Duration,
    /// How often the former compares every document with the cursors (default 60 s).
    pub rescan_interval: Duration,
    /// How long delivered and given-up events stay listed (default 7 days).
    pub keep_finished: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            coalesce_interval: Duration::from_secs(2),
            max_delay: Duration::from_secs(10),
            retry_schedule: DEFAULT_RETRY_SCHEDULE.to_vec(),
            timeout: Duration::from_secs(15),
            max_concurrency: 16,
            max_per_endpoint: 4,
            disable_after: Duration::from_secs(5 * 24 * 3600),
            allow_private: false,
            public_url: None,
            secret_overlap: Duration::from_secs(24 * 3600),
            rescan_interval: Duration::from_secs(60),
            keep_finished: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Parses a duration: a number with a unit (`ms`, `s`, `m`, `h`, `d`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} needs a unit (ms, s, m, h, d)"))?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("{s:?} is not a duration"))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h, d)")),
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// Parses a retry schedule: comma-separated durations (`100ms,200ms,1s`).
pub fn parse_schedule(s: &str) -> Result<Vec<Duration>, String> {
    let schedule = s
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(parse_duration)
        .collect::<Result<Vec<_>, _>>()?;
    if schedule.len() > 32 {
        return Err("a retry schedule has at most 32 delays".into());
    }
    Ok(schedule)
}

/// Why a webhook operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("refused target: {0}")]
    Target(#[from] ssrf::TargetError),
    #[error("bad secret: {0}")]
    Secret(#[from] sign::SecretError),
    #[error(
        "unknown event type {0:?} (known: document.changed, document.deleted, document.restored, document.undeleted)"
    )]
    EventType(String),
    #[error("bad document pattern: {0}")]
    Pattern(String),
    #[error("{0}")]
    Invalid(&'static str),
    #[error("no such webhook endpoint")]
    NotFound,
    #[error(transparent)]
    Database(#[from] DatabaseError),
}

/// What an administrator gives to add an endpoint.
#[derive(Debug, Clone, Default)]
pub struct NewEndpoint {
    pub url: String,
    /// Empty: every event type.
    pub events: Vec<String>,
    pub doc_pattern: Option<String>,
    pub description: String,
    /// `None`: a generated secret.
    pub secret: Option<String>,
}

/// An endpoint as the admin API shows it (no secret).
#[derive(Debug, Clone, Serialize)]
pub struct EndpointView {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub doc_pattern: Option<String>,
    pub description: String,
    pub created_at_ms: u64,
    pub failing_since_ms: Option<u64>,
    pub disabled_at_ms: Option<u64>,
    pub disabled_reason: Option<String>,
    /// Until when the previous secret still signs (after a rotation).
    pub previous_secret_until_ms: Option<u64>,
}

/// One event of an endpoint and how its delivery went.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryView {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub doc: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub created_at_ms: u64,
    pub attempts: u64,
    /// `pending`, `delivered` or `failed` (given up).
    pub status: &'static str,
    pub next_attempt_at_ms: Option<u64>,
    pub delivered_at_ms: Option<u64>,
    pub last_status: Option<u64>,
    pub last_error: Option<String>,
}

fn endpoint_view(row: &EndpointRow) -> EndpointView {
    EndpointView {
        id: row.id.clone(),
        url: row.url.clone(),
        events: split_types(&row.event_types),
        doc_pattern: row.doc_pattern.clone(),
        description: row.description.clone(),
        created_at_ms: row.created_at_ms,
        failing_since_ms: row.failing_since_ms,
        disabled_at_ms: row.disabled_at_ms,
        disabled_reason: row.disabled_reason.clone(),
        previous_secret_until_ms: row
            .previous_secret_until_ms
            .filter(|until| *until > now_ms()),
    }
}

fn delivery_view(row: EventRow) -> DeliveryView {
    let status = if row.delivered_at_ms.is_some() {
        "delivered"
    } else if row.next_attempt_at_ms.is_none() {
        "failed"
    } else {
        "pending"
    };
    DeliveryView {
        id: row.id,
        event_type: row.event_type,
        doc: row.doc_id,
        first_seq: row.first_seq,
        last_seq: row.last_seq,
        created_at_ms: row.created_at_ms,
        attempts: row.attempts,
        status,
        next_attempt_at_ms: row.next_attempt_at_ms,
        delivered_at_ms: row.delivered_at_ms,
        last_status: row.last_status,
        last_error: row.last_error,
    }
}

fn split_types(types: &str) -> Vec<String> {
    types
        .split(',')
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Whether an endpoint wants events of `event_type` for `doc` (enabled or not).
fn wants(row: &EndpointRow, event_type: &str, doc: &DocId) -> bool {
    row.event_types.split(',').any(|t| t == event_type)
        && row
            .doc_pattern
            .as_deref()
            .is_none_or(|p| DocPattern::parse(p).is_ok_and(|p| p.covers(doc)))
}

/// The stable id of an event: the same endpoint, document, type and range always give the same
/// id (`at_ms` tells apart events of one document at one head, such as a delete, an undelete
/// and a delete again).
fn event_id(
    endpoint: &str,
    doc: &str,
    event_type: &str,
    first: u64,
    last: u64,
    at_ms: u64,
) -> String {
    let mut h = Sha256::new();
    for part in [endpoint, doc, event_type] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    for n in [first, last, at_ms] {
        h.update(n.to_be_bytes());
    }
    format!("msg_{}", hex::encode(&h.finalize()[..16]))
}

/// RFC 3339 UTC time of `ms` since the Unix epoch (`2026-12-07T01:02:03.456Z`).
fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// What every part of the webhook machinery shares.
#[derive(Debug)]
struct Inner {
    store: Store,
    config: WebhookConfig,
    metrics: Arc<Metrics>,
    /// The base of payload links, without a trailing slash.
    public_url: String,
    /// Wakes the deliverer: events were formed, or a delivery finished.
    deliver_wake: Notify,
    /// Wakes the former for a rescan (replay, an endpoint enabled).
    rescan_wake: Notify,
}

impl Inner {
    /// The payload of an event, as sent (Standard Webhooks' `type`, `timestamp`, `data`).
    fn payload(&self, event_type: &str, at_ms: u64, data: serde_json::Value) -> String {
        serde_json::json!({
            "type": event_type,
            "timestamp": rfc3339(at_ms),
            "data": data,
        })
        .to_string()
    }

    fn state_url(&self, doc: &DocId) -> String {
        format!("{}/v1/state/{}", self.public_url, doc.as_str())
    }
}

/// The webhook service of one server: its admin operations, and the former and deliverer
/// tasks it started.
#[derive(Debug, Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

impl Webhooks {
    /// Starts the former and the deliverer (unless `config.enabled` is false); they stop with
    /// `shutdown`. `listening` is the server's address, the default base of payload links.
    pub fn start(
        store: Store,
        config: WebhookConfig,
        metrics: Arc<Metrics>,
        listening: Option<std::net::SocketAddr>,
        shutdown: CancellationToken,
    ) -> Webhooks {
        let public_url = match (&config.public_url, listening) {
            (Some(url), _) => url.trim_end_matches('/').to_owned(),
            (None, Some(addr)) => format!("http://{addr}"),
            (None, None) => String::new(),
        };
        let inner = Arc::new(Inner {
            store,
            config,
            metrics,
            public_url,
            deliver_wake: Notify::new(),
            rescan_wake: Notify::new(),
        });
        if inner.config.enabled {
            tokio::spawn(former::run(inner.clone(), shutdown.clone()));
            tokio::spawn(deliver::run(inner.clone(), shutdown));
        }
        Webhooks { inner }
    }

    /// Adds an endpoint after checking its URL (the SSRF guard), event types, pattern and
    /// secret; returns it and its secret (shown once).
    pub async fn add(&self, new: NewEndpoint) -> Result<(EndpointView, String), WebhookError> {
        if new.url.len() > 2048 || new.description.len() > 1024 {
            return Err(WebhookError::Invalid(
                "the URL is at most 2048 bytes and the description at most 1024",
            ));
        }
        let mut events: Vec<String> = Vec::new();
        for t in &new.events {
            let t = t.trim();
            if !EVENT_TYPES.contains(&t) {
                return Err(WebhookError::EventType(t.to_owned()));
            }
            if !events.iter().any(|e| e == t) {
                events.push(t.to_owned());
            }
        }
        if events.is_empty() {
            events = EVENT_TYPES.iter().map(|t| (*t).to_owned()).collect();
        }
        let doc_pattern = match new.doc_pattern.as_deref().map(str::trim) {
            None | Some("") | Some("*") => None,
            Some(p) => Some(
                DocPattern::parse(p)
                    .map(|_| p.to_owned())
                    .map_err(WebhookError::Pattern)?,
            ),
        };
        let secret = match new.secret {
            Some(s) => {
                sign::parse_secret(&s)?;
                s
            }
            None => sign::generate_secret(),
        };
        // The form first, so a malformed request never causes a DNS lookup.
        ssrf::parse_target(&new.url)?;
        ssrf::check_target(&new.url, self.inner.config.allow_private).await?;
        let id: [u8; 12] = rand::random();
        let row = EndpointRow {
            id: format!("ep_{}", hex::encode(id)),
            url: new.url,
            secret: secret.clone(),
            previous_secret: None,
            previous_secret_until_ms: None,
            event_types: events.join(","),
            doc_pattern,
            description: new.description,
            created_at_ms: now_ms(),
            failing_since_ms: None,
            disabled_at_ms: None,
            disabled_reason: None,
        };
        self.inner.store.webhook_insert_endpoint(&row).await?;
        self.inner.rescan_wake.notify_one();
        tracing::info!(endpoint = %row.id, url = %row.url, "webhook endpoint added");
        Ok((endpoint_view(&row), secret))
    }

    /// Every endpoint.
    pub async fn list(&self) -> Result<Vec<EndpointView>, WebhookError> {
        let rows = self.inner.store.webhook_endpoints().await?;
        Ok(rows.iter().map(endpoint_view).collect())
    }

    /// One endpoint and its newest `limit` events.
    pub async fn get(
        &self,
        id: &str,
        limit: u32,
    ) -> Result<(EndpointView, Vec<DeliveryView>), WebhookError> {
        let row = self
            .inner
            .store
            .webhook_endpoint(id)
            .await?
            .ok_or(WebhookError::NotFound)?;
        let events = self.inner.store.webhook_recent(id, limit.min(1000)).await?;
        Ok((
            endpoint_view(&row),
            events.into_iter().map(delivery_view).collect(),
        ))
    }

    /// Removes an endpoint, its cursors and its events.
    pub async fn remove(&self, id: &str) -> Result<(), WebhookError> {
        if self.inner.store.webhook_delete_endpoint(id).await? {
            tracing::info!(endpoint = %id, "webhook endpoint removed");
            Ok(())
        } else {
            Err(WebhookError::NotFound)
        }
    }

    /// A new secret; the old one keeps signing for `secret_overlap`. Returns the new secret.
    pub async fn rotate(&self, id: &str, secret: Option<String>) -> Result<String, WebhookError> {
        let secret = match secret {
            Some(s) => {
                sign::parse_secret(&s)?;
                s
            }
            None => sign::generate_secret(),
        };
        let until = now_ms().saturating_add(self.inner.config.secret_overlap.as_millis() as u64);
        if self
            .inner
            .store
            .webhook_rotate_secret(id, &secret, until)
            .await?
        {
            Ok(secret)
        } else {
            Err(WebhookError::NotFound)
        }
    }

    /// Enables a disabled endpoint; its pending events and the changes since are sent.
    pub async fn enable(&self, id: &str) -> Result<(), WebhookError> {
        if !self.inner.store.webhook_enable(id).await? {
            return Err(WebhookError::NotFound);
        }
        self.inner.rescan_wake.notify_one();
        self.inner.deliver_wake.notify_one();
        Ok(())
    }

    /// Manual replay: entries from `from_seq` on (of `doc`, or of every document) are formed
    /// into events again; returns how many cursors moved.
    pub async fn replay(
        &self,
        id: &str,
        doc: Option<&DocId>,
        from_seq: u64,
    ) -> Result<u64, WebhookError> {
        if from_seq == 0 {
            return Err(WebhookError::Invalid("replay starts at a seq of 1 or more"));
        }
        if self.inner.store.webhook_endpoint(id).await?.is_none() {
            return Err(WebhookError::NotFound);
        }
        let moved = self
            .inner
            .store
            .webhook_replay(id, doc.map(DocId::as_str), from_seq)
            .await?;
        self.inner.rescan_wake.notify_one();
        Ok(moved)
    }

    /// Puts a `document.deleted`, `.restored` or `.undeleted` event (the document at `seq`) in
    /// the outbox of every endpoint that wants it. Failures are logged: the admin action itself
    /// already happened.
    pub async fn document_event(&self, doc: &DocId, event_type: &'static str, seq: u64) {
        let inner = &self.inner;
        let endpoints = match inner.store.webhook_endpoints().await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(doc = %doc, error = %e, "webhook: reading endpoints failed");
                return;
            }
        };
        let at = now_ms();
        let data = serde_json::json!({
            "document": doc.as_str(),
            "seq": seq,
            "url": inner.state_url(doc),
        });
        let payload = inner.payload(event_type, at, data);
        let events: Vec<NewEvent> = endpoints
            .iter()
            .filter(|ep| wants(ep, event_type, doc))
            .map(|ep| NewEvent {
                id: event_id(&ep.id, doc.as_str(), event_type, seq, seq, at),
                endpoint_id: ep.id.clone(),
                doc_id: doc.as_str().to_owned(),
                event_type: event_type.to_owned(),
                first_seq: seq,
                last_seq: seq,
                payload: payload.clone(),
                created_at_ms: at,
                cursor: None,
            })
            .collect();
        match inner.store.webhook_form(&events).await {
            Ok(written) => {
                inner.metrics.webhooks.count_events(written as u64);
                inner.deliver_wake.notify_one();
            }
            Err(e) => {
                tracing::error!(doc = %doc, event_type, error = %e, "webhook: storing an event failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations_and_schedules() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        assert_eq!(
            parse_schedule("100ms,200ms, 1s"),
            Ok(vec![
                Duration::from_millis(100),
                Duration::from_millis(200),
                Duration::from_secs(1)
            ])
        );
    }

    #[test]
    fn event_ids_are_stable_and_distinct() {
        let a = event_id("ep_1", "doc", DOCUMENT_CHANGED, 1, 5, 0);
        assert_eq!(a, event_id("ep_1", "doc", DOCUMENT_CHANGED, 1, 5, 0));
        assert_ne!(a, event_id("ep_1", "doc", DOCUMENT_CHANGED, 1, 6, 0));
        assert_ne!(a, event_id("ep_2", "doc", DOCUMENT_CHANGED, 1, 5, 0));
        assert!(a.starts_with("msg_") && a.len() == 4 + 32);
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_614_265_330_123), "2021-02-25T15:02:10.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
