//! `lattice admin …`: the history API from the command line, against a running server
//! (`--url` with `--token` / `LATTICE_TOKEN`) or, read-only, straight from a database
//! (`--database-url`). Both paths produce the same JSON (`--json`) because both end in
//! `lattice_server::history`; the default output is a table for people.

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use lattice_engine::{DocId, ReplicaId};
use lattice_server::auth::DocPattern;
use lattice_server::history::{
    self, Content, Diff, DocList, HistoryPage, HistoryQuery, ListQuery, RestoreOutcome,
};
use lattice_server::store::{Store, StoreConfig};
use serde::de::DeserializeOwned;
use serde_json::Value as Json;

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    export LATTICE_TOKEN=…                          # an admin-scope token\n  \
    lattice admin --url http://127.0.0.1:8080 docs --prefix notes/\n  \
    lattice admin --url http://127.0.0.1:8080 history notes/today\n  \
    lattice admin --url http://127.0.0.1:8080 diff notes/today --from 10 --to 42\n  \
    lattice admin --url http://127.0.0.1:8080 restore notes/today --to 10\n  \
    lattice admin --database-url sqlite://lattice.db show notes/today --at 10   # read-only, no server")]
pub(crate) struct AdminArgs {
    /// Server to ask, e.g. `https://lattice.example.com` or `http://127.0.0.1:8080`.
    #[arg(long, env = "LATTICE_URL", conflicts_with = "database_url")]
    url: Option<String>,
    /// Admin token for `--url`.
    #[arg(long, env = "LATTICE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Read a stored database directly instead (read-only commands; no server needed).
    #[arg(long)]
    database_url: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand, Debug)]
enum AdminCommand {
    /// List documents: size, updates, first and last change, live subscribers.
    Docs {
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long)]
        after: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long)]
        include_deleted: bool,
    },
    /// A document's history: one line per change, grouped into sessions.
    History {
        doc: String,
        /// Entries after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long)]
        limit: Option<u32>,
        /// Seconds between two changes that end a session.
        #[arg(long)]
        session_gap_s: Option<u64>,
    },
    /// The content at a version (default: the head).
    Show {
        doc: String,
        #[arg(long)]
        at: Option<u64>,
    },
    /// What changed between two versions.
    Diff {
        doc: String,
        #[arg(long)]
        from: u64,
        #[arg(long)]
        to: Option<u64>,
    },
    /// Bring texts and registers back to a version, live (needs `--url`).
    Restore {
        doc: String,
        #[arg(long)]
        to: u64,
    },
}

enum Source {
    Http {
        /// `http(s)://host[:port][/prefix]`, without a trailing slash.
        base: String,
        token: Option<String>,
    },
    Db(Store),
}

fn enc(doc: &str) -> String {
    doc.split('/')
        .map(|seg| {
            seg.bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Largest response body the CLI reads, in bytes.
const MAX_RESPONSE_BYTES: u64 = 256 * 1024 * 1024;

/// One request; the body of a 2xx answer as JSON, or the server's error message. `ureq` is a
/// blocking client, so it runs on tokio's blocking pool.
async fn request(
    base: &str,
    token: Option<&str>,
    method: &'static str,
    path: &str,
    body: Option<String>,
) -> Result<Json> {
    let url = format!("{base}{path}");
    let auth = token.map(|t| format!("Bearer {t}"));
    let (status, text) = tokio::task::spawn_blocking(move || -> Result<(u16, String)> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(120)))
            .build()
            .into();
        let mut response = match method {
            "POST" => {
                let mut req = agent.post(&url).content_type("application/json");
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.send(body.unwrap_or_default())
            }
            _ => {
                let mut req = agent.get(&url);
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.call()
            }
        }
        .with_context(|| format!("{method} {url}"))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .read_to_string()?;
        Ok((status, text))
    })
    .await??;
    let json: Json = serde_json::from_str(&text).unwrap_or(Json::Null);
    if !(200..300).contains(&status) {
        bail!(
            "{status}: {} {}",
            json["error"].as_str().unwrap_or("error"),
            json["message"].as_str().unwrap_or("")
        );
    }
    Ok(json)
}

impl Source {
    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<(T, Json)> {
        let Source::Http { base, token } = self else {
            bail!("not an HTTP source");
        };
        let json = request(base, token.as_deref(), "GET", path, None).await?;
        Ok((serde_json::from_value(json.clone())?, json))
    }
}

fn pair<T: serde::Serialize>(v: T) -> Result<(T, Json)> {
    let json = serde_json::to_value(&v)?;
    Ok((v, json))
}

pub(crate) async fn run(args: AdminArgs) -> Result<()> {
    let source = match (&args.url, &args.database_url) {
        (Some(url), _) => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!("--url must start with http:// or https://");
            }
            Source::Http {
                base: url.trim_end_matches('/').to_owned(),
                token: args.token.clone(),
            }
        }
        (None, Some(db)) => {
            // No background checkpoints: inspection writes nothing but pending migrations.
            let config = StoreConfig {
                checkpoint_every_updates: 0,
                checkpoint_every_bytes: 0,
                ..StoreConfig::default()
            };
            Source::Db(Store::open(db, config).await.context("--database-url")?)
        }
        (None, None) => bail!("say where to look: --url (with --token) or --database-url"),
    };
    let replica = ReplicaId::from_random(1);
    let result = command(&source, &args, replica).await;
    if let Source::Db(store) = &source {
        store.close().await;
    }
    result
}

async fn command(source: &Source, args: &AdminArgs, replica: ReplicaId) -> Result<()> {
    match &args.command {
        AdminCommand::Docs {
            prefix,
            after,
            limit,
            include_deleted,
        } => {
            let (list, json): (DocList, Json) = match source {
                Source::Http { .. } => {
                    let mut q = format!(
                        "/api/admin/docs?prefix={}&include_deleted={include_deleted}",
                        enc(prefix)
                    );
                    if let Some(a) = after {
                        q.push_str(&format!("&after={}", enc(a)));
                    }
                    if let Some(l) = limit {
                        q.push_str(&format!("&limit={l}"));
                    }
                    source.get(&q).await?
                }
                Source::Db(store) => pair(
                    history::list_documents(
                        store,
                        &ListQuery {
                            prefix: prefix.clone(),
                            after: after.clone().map(DocId::new).transpose()?,
                            limit: limit.unwrap_or(history::DEFAULT_LIST_LIMIT),
                            include_deleted: *include_deleted,
                        },
                        &[DocPattern::All],
                        |_| None,
                    )
                    .await?,
                )?,
            };
            if args.json {
                return print_json(&json);
            }
            println!(
                "{:<40} {:>9} {:>11} {:<24} {:<24} {:>5}",
                "DOCUMENT", "UPDATES", "BYTES", "FIRST CHANGE", "LAST CHANGE", "LIVE"
            );
            for d in &list.documents {
                println!(
                    "{:<40} {:>9} {:>11} {:<24} {:<24} {:>5}{}",
                    d.id,
                    d.updates,
                    d.size_bytes,
                    d.first_change,
                    d.last_change,
                    d.live_subscribers.map_or("-".to_owned(), |n| n.to_string()),
                    if d.deleted { "  (deleted)" } else { "" }
                );
            }
            if let Some(next) = &list.next_after {
                println!("… more: --after {next}");
            }
        }
        AdminCommand::History {
            doc,
            after,
            limit,
            session_gap_s,
        } => {
            let (page, json): (HistoryPage, Json) = match source {
                Source::Http { .. } => {
                    let mut q = format!("/api/admin/history/{}?after={after}", enc(doc));
                    if let Some(l) = limit {
                        q.push_str(&format!("&limit={l}"));
                    }
                    if let Some(g) = session_gap_s {
                        q.push_str(&format!("&session_gap_s={g}"));
                    }
                    source.get(&q).await?
                }
                Source::Db(store) => pair(
                    history::history(
                        store,
                        &DocId::new(doc.as_str())?,
                        HistoryQuery {
                            after: *after,
                            limit: limit.unwrap_or(history::DEFAULT_HISTORY_LIMIT),
                            session_gap_ms: session_gap_s
                                .map_or(history::DEFAULT_SESSION_GAP_MS, |s| s * 1_000),
                        },
                        replica,
                    )
                    .await?,
                )?,
            };
            if args.json {
                return print_json(&json);
            }
            println!(
                "{} — {} updates{}",
                page.doc,
                page.head_seq,
                if page.deleted { " (deleted)" } else { "" }
            );
            let mut entries = page.entries.iter().peekable();
            for s in &page.sessions {
                println!(
                    "\n▸ {} · {} change(s) #{}–#{} · {} → {} · +{} −{} chars",
                    s.author.as_deref().unwrap_or("(no author)"),
                    s.entries,
                    s.from_seq,
                    s.to_seq,
                    s.from,
                    s.to,
                    s.chars_inserted,
                    s.chars_deleted
                );
                while let Some(e) = entries.next_if(|e| e.seq <= s.to_seq) {
                    println!(
                        "  {:>7}  {}  {:<12} replica {:<10} {:>6} B  {}",
                        e.seq,
                        e.time,
                        e.author.as_deref().unwrap_or("-"),
                        e.replica,
                        e.byte_size,
                        e.summary
                    );
                }
            }
            if let Some(next) = page.next_after {
                println!("\n… more: --after {next}");
            }
        }
        AdminCommand::Show { doc, at } => {
            let (content, json): (Content, Json) = match source {
                Source::Http { .. } => {
                    let q = match at {
                        Some(at) => format!("/api/admin/content/{}?at={at}", enc(doc)),
                        None => format!("/api/admin/content/{}", enc(doc)),
                    };
                    source.get(&q).await?
                }
                Source::Db(store) => {
                    pair(history::content(store, &DocId::new(doc.as_str())?, *at, replica).await?)?
                }
            };
            if args.json {
                return print_json(&json);
            }
            println!(
                "{} at version {} of {}",
                content.doc, content.seq, content.head_seq
            );
            print_view(&content.content);
        }
        AdminCommand::Diff { doc, from, to } => {
            let (diff, json): (Diff, Json) = match source {
                Source::Http { .. } => {
                    let mut q = format!("/api/admin/diff/{}?from={from}", enc(doc));
                    if let Some(to) = to {
                        q.push_str(&format!("&to={to}"));
                    }
                    source.get(&q).await?
                }
                Source::Db(store) => {
                    let id = DocId::new(doc.as_str())?;
                    let to = match to {
                        Some(to) => *to,
                        None => {
                            store
                                .document(&id)
                                .await?
                                .ok_or_else(|| anyhow!("no such document"))?
                                .head_seq
                        }
                    };
                    pair(history::diff(store, &id, *from, to, replica).await?)?
                }
            };
            if args.json {
                return print_json(&json);
            }
            println!("{}: version {} → {}", diff.doc, diff.from, diff.to);
            for (name, ops) in &diff.diff.texts {
                println!("\ntext {name:?}:");
                let mut line = String::new();
                for op in ops {
                    match op.op {
                        lattice_engine::history::DiffOp::Equal => line.push_str(&op.text),
                        lattice_engine::history::DiffOp::Insert => {
                            line.push_str(&format!("{{+{}+}}", op.text));
                        }
                        lattice_engine::history::DiffOp::Delete => {
                            line.push_str(&format!("[-{}-]", op.text));
                        }
                    }
                }
                println!("{line}");
            }
            for (name, c) in &diff.diff.counters {
                println!("counter {name}: {} → {}", c.from, c.to);
            }
            for (name, r) in &diff.diff.registers {
                println!("register {name}: {} → {}", r.from, r.to);
            }
            for name in &diff.diff.other {
                println!("{name} changed");
            }
        }
        AdminCommand::Restore { doc, to } => {
            let Source::Http { base, token } = source else {
                bail!(
                    "restore needs a running server (--url): it goes through the document's \
                     room so that connected editors receive it; --database-url is read-only"
                );
            };
            let json = request(
                base,
                token.as_deref(),
                "POST",
                &format!("/api/admin/restore/{}", enc(doc)),
                Some(format!("{{\"to\": {to}}}")),
            )
            .await?;
            if args.json {
                return print_json(&json);
            }
            let r: RestoreOutcome = serde_json::from_value(json)?;
            match r.seq {
                Some(seq) => println!(
                    "{} restored to version {} as update {seq}",
                    r.doc, r.restored_to
                ),
                None => println!(
                    "{}: version {} matches the current content; nothing to do",
                    r.doc, r.restored_to
                ),
            }
            for (name, c) in &r.report.counters_not_restored {
                println!(
                    "counter {name} kept at {} (it was {} at version {}; grow-only counters never go down)",
                    c.current, c.at_version, r.restored_to
                );
            }
            for name in &r.report.not_restored {
                println!("{name} not restored");
            }
        }
    }
    Ok(())
}

fn print_json(json: &Json) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(json)?);
    Ok(())
}

fn print_view(view: &Json) {
    if let Some(texts) = view["texts"].as_object() {
        for (name, text) in texts {
            println!("\n── text {name:?} ──\n{}", text.as_str().unwrap_or(""));
        }
    }
    for key in ["counters", "registers", "maps", "arrays", "xml"] {
        if let Some(items) = view[key].as_object().filter(|m| !m.is_empty()) {
            println!("\n── {key} ──");
            for (name, v) in items {
                println!("{name} = {v}");
            }
        }
    }
}
