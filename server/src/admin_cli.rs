//! `lattice admin …`: the history API from the command line, against a running server
//! (`--url` with `--token` / `LATTICE_TOKEN`) or, read-only, straight from a database
//! (`--database-url`). Both paths produce the same JSON (`--json`) because both end in
//! `lattice_server::history`; the default output is a table for people.

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use lattice_engine::{DocId, ReplicaId};
use lattice_server::history::{
    self, Content, Diff, DocList, HistoryPage, HistoryQuery, ListQuery, RestoreOutcome,
};
use lattice_server::store::{Store, StoreConfig};
use serde::de::DeserializeOwned;
use serde_json::Value as Json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Args, Debug)]
pub(crate) struct AdminArgs {
    /// Server to ask, e.g. `http://127.0.0.1:8080` (plain HTTP; see docs/admin-api.md).
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
        host: String,
        base_path: String,
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

/// One HTTP/1.1 request over a fresh connection; the body of a 2xx answer as JSON, or the
/// server's error message.
async fn request(
    host: &str,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<Json> {
    let mut stream = tokio::net::TcpStream::connect(host)
        .await
        .with_context(|| format!("cannot connect to {host}"))?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Accept: application/json\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP response"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut payload = raw[split + 4..].to_vec();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("malformed status line"))?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        payload = dechunk(&payload)?;
    }
    let json: Json = serde_json::from_slice(&payload).unwrap_or(Json::Null);
    if !(200..300).contains(&status) {
        bail!(
            "{status}: {} {}",
            json["error"].as_str().unwrap_or("error"),
            json["message"].as_str().unwrap_or("")
        );
    }
    Ok(json)
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("malformed chunked body"))?;
        let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..line_end]).trim(), 16)?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if rest.len() < size {
            bail!("truncated chunked body");
        }
        out.extend_from_slice(&rest[..size]);
        rest = rest.get(size + 2..).unwrap_or_default();
    }
}

impl Source {
    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<(T, Json)> {
        let Source::Http {
            host,
            base_path,
            token,
        } = self
        else {
            bail!("not an HTTP source");
        };
        let json = request(
            host,
            token.as_deref(),
            "GET",
            &format!("{base_path}{path}"),
            None,
        )
        .await?;
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
            let rest = url.strip_prefix("http://").ok_or_else(|| {
                anyhow!("--url must start with http:// (TLS: see docs/admin-api.md)")
            })?;
            let (host, base) = rest.split_once('/').unwrap_or((rest, ""));
            let base_path = if base.is_empty() {
                String::new()
            } else {
                format!("/{}", base.trim_end_matches('/'))
            };
            Source::Http {
                host: host.to_owned(),
                base_path,
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
                        |_| true,
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
            let Source::Http {
                host,
                base_path,
                token,
            } = source
            else {
                bail!(
                    "restore needs a running server (--url): it goes through the document's \
                     room so that connected editors receive it; --database-url is read-only"
                );
            };
            let json = request(
                host,
                token.as_deref(),
                "POST",
                &format!("{base_path}/api/admin/restore/{}", enc(doc)),
                Some(&format!("{{\"to\": {to}}}")),
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
