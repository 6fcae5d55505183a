//! Webhooks on the command line: the `lattice serve` flags that shape delivery
//! ([`WebhookArgs`], flattened into `serve`), and `lattice admin webhooks add|list|show|remove|
//! replay|rotate|enable` against a running server's admin API (docs/webhooks.md).

use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use clap::{Args, Subcommand};
use lattice_server::webhooks::{WebhookConfig, parse_duration, parse_schedule};
use serde_json::{Value as Json, json};

use crate::admin::request;

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

/// A parsed `--webhook-retry-schedule` (a newtype: clap reads `Option<Vec<_>>` as a list of
/// values).
#[derive(Debug, Clone)]
pub(crate) struct Schedule(Vec<Duration>);

fn schedule(s: &str) -> Result<Schedule, String> {
    parse_schedule(s).map(Schedule)
}

/// `lattice serve` flags for webhooks.
#[derive(Args, Debug)]
pub(crate) struct WebhookArgs {
    /// Do not send webhook events (endpoints can still be managed).
    #[arg(long, env = "LATTICE_WEBHOOKS_DISABLED")]
    webhooks_disabled: bool,
    /// Allow webhook targets on loopback, private, link-local and metadata addresses.
    #[arg(long, env = "LATTICE_WEBHOOK_ALLOW_PRIVATE")]
    webhook_allow_private: bool,
    /// Delays before each retry of a failed delivery, e.g. `5s,5m,30m,2h,5h,10h,10h` (the
    /// default).
    #[arg(long, env = "LATTICE_WEBHOOK_RETRY_SCHEDULE", value_parser = schedule)]
    webhook_retry_schedule: Option<Schedule>,
    /// At most one `document.changed` per endpoint and document per this interval (`2s`).
    #[arg(long, env = "LATTICE_WEBHOOK_COALESCE", value_parser = duration)]
    webhook_coalesce: Option<Duration>,
    /// The longest a change waits for its event under continuous edits (`10s`).
    #[arg(long, env = "LATTICE_WEBHOOK_MAX_DELAY", value_parser = duration)]
    webhook_max_delay: Option<Duration>,
    /// A delivery counts if a 2xx answer arrives within this time (`15s`).
    #[arg(long, env = "LATTICE_WEBHOOK_TIMEOUT", value_parser = duration)]
    webhook_timeout: Option<Duration>,
    /// Deliveries in flight at once over all endpoints (16).
    #[arg(long, env = "LATTICE_WEBHOOK_CONCURRENCY")]
    webhook_concurrency: Option<usize>,
    /// Deliveries in flight at once to one endpoint (4).
    #[arg(long, env = "LATTICE_WEBHOOK_PER_ENDPOINT")]
    webhook_per_endpoint: Option<usize>,
    /// Disable an endpoint whose deliveries all failed for this long (`5d`).
    #[arg(long, env = "LATTICE_WEBHOOK_DISABLE_AFTER", value_parser = duration)]
    webhook_disable_after: Option<Duration>,
    /// Public base URL of this server, for the links in payloads (default: the listening
    /// address).
    #[arg(long, env = "LATTICE_WEBHOOK_PUBLIC_URL")]
    webhook_public_url: Option<String>,
    /// How long a rotated-out secret keeps signing (`24h`).
    #[arg(long, env = "LATTICE_WEBHOOK_SECRET_OVERLAP", value_parser = duration)]
    webhook_secret_overlap: Option<Duration>,
    /// How often every document is compared with the endpoints' cursors (`60s`).
    #[arg(long, env = "LATTICE_WEBHOOK_RESCAN", value_parser = duration)]
    webhook_rescan: Option<Duration>,
}

impl WebhookArgs {
    /// The webhook configuration these flags describe.
    pub(crate) fn config(&self) -> WebhookConfig {
        let mut c = WebhookConfig {
            enabled: !self.webhooks_disabled,
            allow_private: self.webhook_allow_private,
            public_url: self.webhook_public_url.clone(),
            ..WebhookConfig::default()
        };
        if let Some(s) = &self.webhook_retry_schedule {
            c.retry_schedule = s.0.clone();
        }
        let set = |field: &mut Duration, v: Option<Duration>| {
            if let Some(v) = v {
                *field = v;
            }
        };
        set(&mut c.coalesce_interval, self.webhook_coalesce);
        set(&mut c.max_delay, self.webhook_max_delay);
        set(&mut c.timeout, self.webhook_timeout);
        set(&mut c.disable_after, self.webhook_disable_after);
        set(&mut c.secret_overlap, self.webhook_secret_overlap);
        set(&mut c.rescan_interval, self.webhook_rescan);
        if let Some(n) = self.webhook_concurrency {
            c.max_concurrency = n.max(1);
        }
        if let Some(n) = self.webhook_per_endpoint {
            c.max_per_endpoint = n.max(1);
        }
        c
    }
}

/// `lattice admin webhooks …` (needs `--url` and an admin token for every document).
#[derive(Subcommand, Debug)]
pub(crate) enum WebhookCommand {
    /// Add an endpoint; prints its id and secret (the secret is shown only here).
    Add {
        url: String,
        /// Event types (repeat or comma-separate); default: all.
        #[arg(long = "event", value_delimiter = ',')]
        events: Vec<String>,
        /// Only documents matching this pattern (`doc`, `prefix/*`, `*`).
        #[arg(long)]
        doc_pattern: Option<String>,
        #[arg(long, default_value = "")]
        description: String,
        /// Use this `whsec_…` secret instead of a generated one.
        #[arg(long)]
        secret: Option<String>,
    },
    /// List endpoints.
    List,
    /// An endpoint and its recent deliveries.
    Show {
        id: String,
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Remove an endpoint (its pending events are dropped).
    Remove { id: String },
    /// Send the entries from `--from-seq` on again (of `--doc`, or of every document).
    Replay {
        id: String,
        #[arg(long)]
        from_seq: u64,
        #[arg(long)]
        doc: Option<String>,
    },
    /// A new secret; the old one keeps signing for the server's overlap.
    Rotate { id: String },
    /// Enable an endpoint disabled for failing.
    Enable { id: String },
}

/// Runs one webhook command against `base` with `token`.
pub(crate) async fn run(
    base: &str,
    token: Option<&str>,
    json_out: bool,
    cmd: &WebhookCommand,
) -> Result<()> {
    let path = |id: &str, rest: &str| format!("/api/admin/webhooks/{}{rest}", enc_id(id));
    let answer = match cmd {
        WebhookCommand::Add {
            url,
            events,
            doc_pattern,
            description,
            secret,
        } => {
            let body = json!({
                "url": url,
                "events": events,
                "doc_pattern": doc_pattern,
                "description": description,
                "secret": secret,
            });
            request(
                base,
                token,
                "POST",
                "/api/admin/webhooks",
                Some(body.to_string()),
            )
            .await?
        }
        WebhookCommand::List => request(base, token, "GET", "/api/admin/webhooks", None).await?,
        WebhookCommand::Show { id, limit } => {
            let q = limit.map(|l| format!("?limit={l}")).unwrap_or_default();
            request(base, token, "GET", &path(id, &q), None).await?
        }
        WebhookCommand::Remove { id } => {
            request(base, token, "DELETE", &path(id, ""), None).await?
        }
        WebhookCommand::Replay { id, from_seq, doc } => {
            let body = json!({ "from_seq": from_seq, "doc": doc });
            request(
                base,
                token,
                "POST",
                &path(id, "/replay"),
                Some(body.to_string()),
            )
            .await?
        }
        WebhookCommand::Rotate { id } => {
            request(base, token, "POST", &path(id, "/rotate"), None).await?
        }
        WebhookCommand::Enable { id } => {
            request(base, token, "POST", &path(id, "/enable"), None).await?
        }
    };
    if json_out {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    print_human(cmd, &answer)
}

/// Endpoint ids are `ep_` and hex; anything else is refused here rather than sent.
fn enc_id(id: &str) -> String {
    id.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

fn print_human(cmd: &WebhookCommand, answer: &Json) -> Result<()> {
    let endpoint_line = |e: &Json| {
        let state = if e["disabled_at_ms"].is_null() {
            "enabled"
        } else {
            "DISABLED"
        };
        format!(
            "{:<28} {:<9} {:<50} {}",
            e["id"].as_str().unwrap_or(""),
            state,
            e["url"].as_str().unwrap_or(""),
            e["events"]
                .as_array()
                .map(|a| a
                    .iter()
                    .filter_map(Json::as_str)
                    .collect::<Vec<_>>()
                    .join(","))
                .unwrap_or_default()
        )
    };
    match cmd {
        WebhookCommand::Add { .. } => {
            println!("{}", endpoint_line(&answer["endpoint"]));
            println!(
                "secret: {}",
                answer["secret"]
                    .as_str()
                    .ok_or_else(|| anyhow!("no secret in the answer"))?
            );
        }
        WebhookCommand::List => {
            let list = answer["endpoints"].as_array().cloned().unwrap_or_default();
            println!("{:<28} {:<9} {:<50} EVENTS", "ID", "STATE", "URL");
            for e in &list {
                println!("{}", endpoint_line(e));
            }
        }
        WebhookCommand::Show { .. } => {
            println!("{}", endpoint_line(&answer["endpoint"]));
            if let Some(reason) = answer["endpoint"]["disabled_reason"].as_str() {
                println!("disabled: {reason}");
            }
            println!(
                "{:<36} {:<20} {:<30} {:>12} {:<10} {:>8} LAST",
                "EVENT", "TYPE", "DOCUMENT", "SEQS", "STATUS", "ATTEMPTS"
            );
            for d in answer["deliveries"].as_array().into_iter().flatten() {
                println!(
                    "{:<36} {:<20} {:<30} {:>12} {:<10} {:>8} {}",
                    d["id"].as_str().unwrap_or(""),
                    d["type"].as_str().unwrap_or(""),
                    d["doc"].as_str().unwrap_or(""),
                    format!("{}-{}", d["first_seq"], d["last_seq"]),
                    d["status"].as_str().unwrap_or(""),
                    d["attempts"],
                    d["last_error"]
                        .as_str()
                        .map(str::to_owned)
                        .or_else(|| d["last_status"].as_u64().map(|s| s.to_string()))
                        .unwrap_or_default()
                );
            }
        }
        WebhookCommand::Remove { id } => println!("removed {id}"),
        WebhookCommand::Replay { id, from_seq, .. } => println!(
            "{id}: replaying from seq {from_seq} ({} cursors moved)",
            answer["cursors_moved"]
        ),
        WebhookCommand::Rotate { id } => match answer["secret"].as_str() {
            Some(secret) => println!("{id}: new secret {secret}"),
            None => bail!("no secret in the answer"),
        },
        WebhookCommand::Enable { id } => println!("enabled {id}"),
    }
    Ok(())
}
