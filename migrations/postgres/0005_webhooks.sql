-- Lattice storage, schema 5 (Postgres dialect). Keep the number in step with ../sqlite/.
-- Durable webhooks (server/src/webhooks/, docs/webhooks.md). Nothing here is written on the
-- commit path: the webhook former reads the log after commits and writes these tables itself.

-- One row per endpoint. `event_types` is a comma-separated list of event types;
-- `doc_pattern` an auth-style document pattern (exact, `prefix/*`, `*`), NULL for every
-- document. `previous_secret` stays valid for signing until `previous_secret_until_ms` (secret
-- rotation). `failing_since_ms` is the first failed attempt since the last success; an endpoint
-- failing for longer than the configured time gets `disabled_at_ms` and a reason.
CREATE TABLE webhook_endpoints (
    id                      TEXT    NOT NULL PRIMARY KEY,
    url                     TEXT    NOT NULL,
    secret                  TEXT    NOT NULL,
    previous_secret         TEXT,
    previous_secret_until_ms BIGINT,
    event_types             TEXT    NOT NULL,
    doc_pattern             TEXT,
    description             TEXT    NOT NULL DEFAULT '',
    created_at_ms           BIGINT NOT NULL,
    failing_since_ms        BIGINT,
    disabled_at_ms          BIGINT,
    disabled_reason         TEXT
);

-- The per-endpoint cursor into each document's log: every entry up to `seq` has been turned into
-- an event (in `webhook_events`) for that endpoint. Written in the same transaction as the event.
-- A document without a row was created after the endpoint (an endpoint starts with a row per
-- existing document at its head).
CREATE TABLE webhook_cursors (
    endpoint_id TEXT    NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    doc_id      TEXT    NOT NULL,
    seq         BIGINT NOT NULL,
    PRIMARY KEY (endpoint_id, doc_id)
);

-- The outbox: every event formed for an endpoint, with its stable id and exact payload, until
-- it is delivered or given up (and kept a while after, for the admin UI). `next_attempt_at_ms`
-- is NULL once nothing more will be tried.
CREATE TABLE webhook_events (
    id                 TEXT    NOT NULL PRIMARY KEY,
    endpoint_id        TEXT    NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    doc_id             TEXT    NOT NULL,
    event_type         TEXT    NOT NULL,
    first_seq          BIGINT NOT NULL,
    last_seq           BIGINT NOT NULL,
    payload            TEXT    NOT NULL,
    created_at_ms      BIGINT NOT NULL,
    attempts           BIGINT NOT NULL DEFAULT 0,
    next_attempt_at_ms BIGINT,
    delivered_at_ms    BIGINT,
    failed_at_ms       BIGINT,
    last_status        BIGINT,
    last_error         TEXT
);
CREATE INDEX webhook_events_due ON webhook_events (next_attempt_at_ms)
    WHERE next_attempt_at_ms IS NOT NULL;
CREATE INDEX webhook_events_by_endpoint ON webhook_events (endpoint_id, created_at_ms);
