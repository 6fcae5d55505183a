//! The deliverer: sends due outbox events and records every attempt.
//!
//! One loop reads due events (on enabled endpoints), skips those in flight and those of
//! endpoints at their limit (`max_per_endpoint`), and starts each delivery holding one of
//! `max_concurrency` slots. A delivery is one `POST` of the stored payload, signed with the
//! endpoint's secret (and the previous one during a rotation), on the blocking pool (the HTTP
//! client is synchronous) with an overall timeout; a 2xx answer in time is delivered, anything
//! else a failed attempt, retried after the schedule's next delay with ±20 % jitter, or given up
//! after the last. Attempts are recorded by one recorder task, many per transaction, so that
//! deliveries cost the database (on SQLite, its single writer) few transactions; an event
//! stays "in flight" until its attempt is recorded, so it is never picked up twice, while its
//! endpoint's limit counts only requests (the next one starts as soon as an answer arrives,
//! not after the database write). Events in flight, recorded or not, are capped. The loop
//! sleeps until the next event falls due, a new event is formed, a request ends or an attempt
//! is recorded.
//!
//! A round's list of due events is read once and may wait for slots a while; an event whose
//! attempt is recorded in that time is remembered (`recorded`, emptied as each round starts)
//! and skipped, so a stale list never sends an event twice.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::Inner;
use super::sign::{parse_secret, signature_header};
use super::ssrf::GuardedResolver;
use crate::clock::now_ms;
use crate::store::webhooks::{Attempt, DueEvent};

/// Due events read per round.
const DUE_BATCH: u32 = 256;
/// How often finished events older than `keep_finished` are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Bytes of an error message kept per attempt.
const MAX_ERROR_BYTES: usize = 512;
/// The longest the loop sleeps without looking at the outbox.
const MAX_SLEEP: Duration = Duration::from_secs(5);
/// Attempts recorded in one transaction at most.
const RECORD_BATCH: usize = 256;

/// Deliveries in flight: by event id, and counted per endpoint; and the events recorded since
/// the current round read its due list.
#[derive(Debug, Default)]
struct InFlight {
    events: HashSet<String>,
    per_endpoint: HashMap<String, usize>,
    /// Events whose attempt was recorded after the round's due list was read: that list still
    /// shows them due. Emptied before each read (what was recorded before it, the read sees).
    recorded: HashSet<String>,
}

impl InFlight {
    /// Whether `event` of `endpoint` may start: not in flight, not recorded since the due list
    /// was read, its endpoint under `limit` requests, and fewer than `max_events` events in
    /// flight (requests and attempts waiting to be recorded). If so, it is in flight now.
    fn start(&mut self, event: &str, endpoint: &str, limit: usize, max_events: usize) -> bool {
        let at_limit = self.per_endpoint.get(endpoint).copied().unwrap_or(0) >= limit
            || self.events.len() >= max_events;
        if at_limit || self.recorded.contains(event) || !self.events.insert(event.to_owned()) {
            return false;
        }
        *self.per_endpoint.entry(endpoint.to_owned()).or_default() += 1;
        true
    }

    /// `endpoint`'s request is over (answered, failed or timed out): its endpoint may take
    /// another, while the event stays in flight until its attempt is recorded. True if the
    /// endpoint was at `limit` (a round may have skipped its due events: worth a new round).
    fn answered(&mut self, endpoint: &str, limit: usize) -> bool {
        let Some(n) = self.per_endpoint.get_mut(endpoint) else {
            return false;
        };
        let was_full = *n >= limit;
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.per_endpoint.remove(endpoint);
        }
        was_full
    }

    /// `event`'s attempt is recorded: it leaves the flight, and this round skips it.
    fn recorded(&mut self, event: &str) {
        self.recorded.insert(event.to_owned());
        self.events.remove(event);
    }
}

pub(super) async fn run(inner: Arc<Inner>, shutdown: CancellationToken) {
    let agent = agent(&inner);
    let slots = Arc::new(Semaphore::new(inner.config.max_concurrency.max(1)));
    let in_flight = Arc::new(Mutex::new(InFlight::default()));
    let (record_tx, record_rx) = mpsc::channel(inner.config.max_concurrency.max(1) * 4);
    // Requests, plus attempts waiting for the recorder (its channel, and a batch it writes).
    let max_events = inner.config.max_concurrency.max(1) * 4 + RECORD_BATCH;
    tokio::spawn(record(inner.clone(), record_rx, in_flight.clone()));
    let mut next_prune = Instant::now();
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let now = now_ms();
        // Attempts recorded from here on may be missing from the list about to be read.
        lock(&in_flight).recorded.clear();
        match inner.store.webhook_due(now, DUE_BATCH).await {
            Ok(due) => {
                for event in due {
                    let limit = inner.config.max_per_endpoint.max(1);
                    if !lock(&in_flight).start(&event.id, &event.endpoint_id, limit, max_events) {
                        continue;
                    }
                    let slot = tokio::select! {
                        () = shutdown.cancelled() => return,
                        slot = slots.clone().acquire_owned() => slot,
                    };
                    let Ok(slot) = slot else { return };
                    let (inner, agent, record_tx, in_flight) = (
                        inner.clone(),
                        agent.clone(),
                        record_tx.clone(),
                        in_flight.clone(),
                    );
                    tokio::spawn(async move {
                        let attempt = deliver(&inner, agent, &event).await;
                        drop(slot);
                        // The endpoint's limit counts requests: the next may start while this
                        // attempt waits to be recorded.
                        // Only a request that frees a full endpoint wakes the loop: other
                        // rounds would read the same due list again for nothing.
                        if lock(&in_flight).answered(&event.endpoint_id, limit) {
                            inner.deliver_wake.notify_one();
                        }
                        // The recorder ends the event's time in flight once it is recorded.
                        let _ = record_tx.send(attempt).await;
                    });
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading due webhook events failed"),
        }
        if next_prune <= Instant::now() {
            next_prune = Instant::now() + PRUNE_EVERY;
            let before = now_ms().saturating_sub(inner.config.keep_finished.as_millis() as u64);
            if let Err(e) = inner.store.webhook_prune(before).await {
                tracing::warn!(error = %e, "pruning webhook events failed");
            }
        }
        let wait = match inner.store.webhook_next_due().await {
            Ok(Some(at)) if at > now_ms() => Duration::from_millis(at - now_ms()).min(MAX_SLEEP),
            // Due now: either in flight (their end wakes the loop) or held by a limit.
            Ok(Some(_)) => MAX_SLEEP.min(Duration::from_millis(250)),
            Ok(None) => MAX_SLEEP,
            Err(_) => Duration::from_secs(1),
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = inner.deliver_wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// The HTTP client: no proxy, no redirects, statuses as values, the SSRF guard as resolver.
fn agent(inner: &Inner) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .proxy(None)
        .max_redirects(0)
        .http_status_as_error(false)
        .timeout_global(Some(inner.config.timeout))
        .user_agent(format!("lattice-webhooks/{}", crate::VERSION))
        .build();
    ureq::Agent::with_parts(
        config,
        ureq::unversioned::transport::DefaultConnector::default(),
        GuardedResolver::new(inner.config.allow_private),
    )
}

/// One attempt at one event, recorded.
async fn deliver(inner: &Inner, agent: ureq::Agent, event: &DueEvent) -> Attempt {
    let metrics = &inner.metrics.webhooks;
    metrics.attempts.fetch_add(1, Relaxed);
    metrics.in_flight.fetch_add(1, Relaxed);
    let started = Instant::now();
    let outcome = send(agent, event).await;
    metrics.in_flight.fetch_sub(1, Relaxed);
    metrics
        .delivery_seconds
        .observe(started.elapsed().as_secs_f64());
    let now = now_ms();
    let (status, error) = match &outcome {
        Ok(status) if (200..300).contains(status) => (Some(*status), None),
        Ok(status) => (Some(*status), Some(format!("answered {status}"))),
        Err(e) => (None, Some(e.clone())),
    };
    let delivered = error.is_none();
    let attempts = event.attempts.saturating_add(1);
    let next_attempt_at_ms = if delivered {
        None
    } else {
        inner
            .config
            .retry_schedule
            .get((attempts - 1) as usize)
            .map(|delay| now.saturating_add(jittered(*delay)))
    };
    if delivered {
        metrics.delivered.fetch_add(1, Relaxed);
    } else {
        metrics.failed_attempts.fetch_add(1, Relaxed);
        if next_attempt_at_ms.is_none() {
            metrics.given_up.fetch_add(1, Relaxed);
            tracing::warn!(event = %event.id, endpoint = %event.endpoint_id, attempts, error = ?error, "webhook event given up");
        } else {
            tracing::info!(event = %event.id, endpoint = %event.endpoint_id, attempts, error = ?error, "webhook delivery failed; will retry");
        }
    }
    Attempt {
        event_id: event.id.clone(),
        endpoint_id: event.endpoint_id.clone(),
        at_ms: now,
        status,
        error,
        next_attempt_at_ms,
        delivered,
        disable_if_failing_since_before_ms: now
            .saturating_sub(inner.config.disable_after.as_millis() as u64),
    }
}

/// The recorder: writes attempts in batches, then ends their events' time in flight and wakes
/// the loop. An attempt whose batch fails to write leaves its event due as it was: it is tried
/// again (at least once, never lost).
async fn record(
    inner: Arc<Inner>,
    mut rx: mpsc::Receiver<Attempt>,
    in_flight: Arc<Mutex<InFlight>>,
) {
    let mut batch = Vec::with_capacity(RECORD_BATCH);
    while rx.recv_many(&mut batch, RECORD_BATCH).await > 0 {
        match inner.store.webhook_attempted(&batch).await {
            Ok(disabled) => {
                for (a, _) in batch.iter().zip(disabled).filter(|(_, d)| *d) {
                    inner
                        .metrics
                        .webhooks
                        .endpoints_disabled
                        .fetch_add(1, Relaxed);
                    tracing::warn!(endpoint = %a.endpoint_id, error = ?a.error, "webhook endpoint disabled: failing for longer than the configured time");
                }
            }
            Err(e) => {
                tracing::error!(attempts = batch.len(), error = %e, "recording webhook attempts failed");
                // The events are due again at once: a pause, so a database that refuses writes
                // does not turn into a stream of redeliveries.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        {
            let mut f = lock(&in_flight);
            for a in &batch {
                f.recorded(&a.event_id);
            }
        }
        batch.clear();
        inner.deliver_wake.notify_one();
    }
}

fn lock(in_flight: &Mutex<InFlight>) -> std::sync::MutexGuard<'_, InFlight> {
    in_flight.lock().unwrap_or_else(|e| e.into_inner())
}

/// `delay` ± 20 %.
fn jittered(delay: Duration) -> u64 {
    let ms = delay.as_millis() as f64;
    (ms * rand::random_range(0.8..1.2)) as u64
}

/// Sends one event; its HTTP status, or why there is none.
async fn send(agent: ureq::Agent, event: &DueEvent) -> Result<u16, String> {
    let now = now_ms();
    let mut keys = Vec::with_capacity(2);
    keys.push(parse_secret(&event.secret).map_err(|e| e.to_string())?);
    if let (Some(previous), Some(until)) = (&event.previous_secret, event.previous_secret_until_ms)
        && until > now
        && let Ok(key) = parse_secret(previous)
    {
        keys.push(key);
    }
    let timestamp = now / 1000;
    let signature = signature_header(&keys, &event.id, timestamp, event.payload.as_bytes());
    let (url, id, body) = (event.url.clone(), event.id.clone(), event.payload.clone());
    let sent = tokio::task::spawn_blocking(move || {
        let response = agent
            .post(&url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", &signature)
            .send(body.as_bytes())
            .map_err(|e| e.to_string())?;
        Ok::<u16, String>(response.status().as_u16())
    })
    .await;
    match sent {
        Ok(result) => result.map_err(|mut e| {
            if e.len() > MAX_ERROR_BYTES {
                let mut cut = MAX_ERROR_BYTES;
                while !e.is_char_boundary(cut) {
                    cut -= 1;
                }
                e.truncate(cut);
            }
            e
        }),
        Err(e) => Err(format!("the delivery task failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::InFlight;

    #[test]
    fn an_event_recorded_after_the_due_list_was_read_is_not_started_again() {
        let mut f = InFlight::default();
        assert!(f.start("e1", "ep", 4, 100));
        assert!(!f.start("e1", "ep", 4, 100), "in flight");
        assert!(!f.answered("ep", 4), "the endpoint was not full");
        assert!(!f.start("e1", "ep", 4, 100), "answered, not yet recorded");
        f.recorded("e1");
        // The round that read e1 as due before its attempt was recorded skips it.
        assert!(!f.start("e1", "ep", 4, 100), "recorded during this round");
        // The next round reads the recorded state; if e1 is due again (a retry), it may start.
        f.recorded.clear();
        assert!(f.start("e1", "ep", 4, 100));
    }

    #[test]
    fn an_endpoint_at_its_limit_starts_nothing_more() {
        let mut f = InFlight::default();
        assert!(f.start("a", "ep", 2, 100));
        assert!(f.start("b", "ep", 2, 100));
        assert!(!f.start("c", "ep", 2, 100));
        assert!(f.start("c", "other", 2, 100));
        assert!(f.answered("ep", 2), "the endpoint was full");
        // The endpoint may take another request; `a` itself stays in flight until recorded.
        assert!(f.start("d", "ep", 2, 100));
        assert!(!f.start("a", "ep", 3, 100));
        // Attempts waiting for the recorder count against the cap on events in flight.
        assert!(!f.start("e", "third", 2, 4));
    }
}
