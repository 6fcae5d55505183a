//! SIGKILL under write load: writers keep books while the server is killed at random moments
//! and restarted on the same database and port; afterwards every acknowledged edit must be in
//! the stored documents. (`tests/tests/store_crash.rs` does the same to the store alone, in
//! every test run; this is the whole server, over the wire.)

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use lattice_server::auth::Scope;
use lattice_tests::store_support::{Kind, POSTGRES_URL_VAR, TestDb};

use crate::Ctx;
use crate::lattice::{Lattice, Spec};
use crate::ledger::{self, Crew, Pace};
use crate::report::Outcome;

#[derive(Clone, Copy, Debug)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

const WRITERS: u32 = 8;
const DOCS: u32 = 4;
/// How long to wait for the first acknowledgement after a (re)start.
const PROGRESS: Duration = Duration::from_secs(30);

pub(crate) async fn run(ctx: &Ctx, backend: Backend) -> Result<Outcome> {
    let (name, kind) = match backend {
        Backend::Sqlite => ("kill9-sqlite", Kind::Sqlite),
        Backend::Postgres => ("kill9-postgres", Kind::Postgres),
    };
    if kind == Kind::Postgres && std::env::var(POSTGRES_URL_VAR).is_err() {
        anyhow::bail!(
            "{POSTGRES_URL_VAR} is not set (cargo xtask chaos starts PostgreSQL and sets it)"
        );
    }
    let db = TestDb::new(kind).await;
    let result = rounds(ctx, name, &db.url).await;
    db.cleanup().await;
    result
}

async fn rounds(ctx: &Ctx, name: &str, database_url: &str) -> Result<Outcome> {
    let mut out = Outcome::new(name);
    let spec = Spec::new(ctx, database_url.to_owned(), &format!("{name}.log"))?;
    let mut server = Lattice::start(&spec).await?;
    let crew = Crew::start(
        server.addr,
        &ctx.keys,
        &format!("chaos/{name}"),
        WRITERS,
        DOCS,
        Pace {
            edit_every: Duration::from_millis(4),
            window: 16,
            padding: 0,
        },
    )?;
    let mut kills = 0;
    for round in 0..ctx.rounds {
        let since = Instant::now();
        let progressed = crew.ack_after(since, PROGRESS).await.is_some();
        out.check(progressed, || {
            format!("round {round}: no acknowledgement within {PROGRESS:?} of the (re)start")
        });
        if !progressed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50 + ctx.below(750))).await;
        let alive = server.is_running();
        out.check(alive, || {
            format!("round {round}: the server exited on its own before the kill")
        });
        if !alive {
            break;
        }
        server.kill9().await?;
        kills += 1;
        tokio::time::sleep(Duration::from_millis(ctx.below(200))).await;
        server = Lattice::start(&spec)
            .await
            .with_context(|| format!("restart after kill {kills}"))?;
        eprintln!(
            "  kill {kills}: {} acknowledged so far",
            crew.ledger.summary().acked
        );
    }
    let resumed = crew.ack_after(Instant::now(), PROGRESS).await.is_some();
    out.check(resumed, || {
        "no acknowledgement after the last restart".to_owned()
    });
    let (specs, ledger) = (crew.specs.clone(), crew.ledger.clone());
    let drained = crew.finish(Duration::from_secs(20)).await?;
    out.figure("kills", kills);
    let reader = ctx
        .keys
        .token("auditor", &[&format!("chaos/{name}/*")], Scope::Read)?;
    ledger::account(&mut out, server.addr, &reader, &specs, &ledger, drained).await?;
    let stalls = ledger.summary().stalls;
    out.check(stalls == 0, || {
        format!("{stalls} times a writer heard nothing for 10 s while it waited for an ack")
    });
    let alive = server.is_running();
    out.check(alive, || {
        "the server exited on its own after the last restart".into()
    });
    if alive {
        server.terminate().await?;
    }
    Ok(out)
}
