//! Fresh databases for store tests, on SQLite (a temporary file) or Postgres (a new database
//! per test on the server named by `LATTICE_TEST_POSTGRES_URL`, dropped afterwards, so tests
//! run in parallel). Postgres tests never skip: without the variable they fail and say why.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use lattice_engine::{Delta, DocId, Document, HlcTimestamp, ReplicaId, Value};
use lattice_server::store::{NewEntry, Store, StoreConfig};
use sqlx::Connection as _;

/// The environment variable naming the Postgres server the tests use. The role needs
/// `CREATEDB`. `cargo xtask test` sets it.
pub const POSTGRES_URL_VAR: &str = "LATTICE_TEST_POSTGRES_URL";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

/// One test's database. Call [`TestDb::cleanup`] at the end (a panicking test leaves a
/// Postgres database named `lattice_t_…` behind, which is harmless).
#[derive(Debug)]
pub struct TestDb {
    pub kind: Kind,
    pub url: String,
    admin_url: Option<String>,
    name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

/// The Postgres URL for tests, or a panic that says how to get one.
pub fn postgres_url() -> String {
    match std::env::var(POSTGRES_URL_VAR) {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "{POSTGRES_URL_VAR} is not set: the Postgres store tests need a server \
             (e.g. postgres://lattice:lattice@127.0.0.1:5432/lattice_test, role with CREATEDB). \
             `cargo xtask test` provides one; these tests never skip"
        ),
    }
}

/// `url` with its database name replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_and_path = &base[scheme_end..];
    let host = host_and_path.split('/').next().unwrap_or(host_and_path);
    let mut out = format!("{}{}/{}", &base[..scheme_end], host, db);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

impl TestDb {
    pub async fn new(kind: Kind) -> TestDb {
        match kind {
            Kind::Sqlite => {
                let dir = tempfile::tempdir().expect("temporary directory");
                let url = format!("sqlite://{}", dir.path().join("lattice.db").display());
                TestDb {
                    kind,
                    url,
                    admin_url: None,
                    name: None,
                    _dir: Some(dir),
                }
            }
            Kind::Postgres => {
                let admin_url = postgres_url();
                let name = format!("lattice_t_{}", unique_suffix());
                let mut conn = sqlx::PgConnection::connect(&admin_url)
                    .await
                    .unwrap_or_else(|e| panic!("cannot connect to {POSTGRES_URL_VAR}: {e}"));
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .unwrap_or_else(|e| {
                        panic!("CREATE DATABASE failed (role needs CREATEDB): {e}")
                    });
                let _ = conn.close().await;
                TestDb {
                    kind,
                    url: with_database(&admin_url, &name),
                    admin_url: Some(admin_url),
                    name: Some(name),
                    _dir: None,
                }
            }
        }
    }

    pub async fn open(&self, config: StoreConfig) -> Store {
        Store::open(&self.url, config)
            .await
            .unwrap_or_else(|e| panic!("open {}: {e}", self.url))
    }

    /// Runs one statement straight against the database (no store involved), with `$1` bound
    /// to `blob` when given: for simulating old bugs and future schemas.
    pub async fn execute(&self, sql: &str, blob: Option<Vec<u8>>) {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        match self.kind {
            Kind::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.url)
                    .await
                    .expect("connect");
                let mut q = sqlx::query(sql);
                if let Some(b) = blob {
                    q = q.bind(b);
                }
                q.execute(&mut conn).await.expect("execute");
                let _ = conn.close().await;
            }
            Kind::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.url)
                    .await
                    .expect("connect");
                let mut q = sqlx::query(sql);
                if let Some(b) = blob {
                    q = q.bind(b);
                }
                q.execute(&mut conn).await.expect("execute");
                let _ = conn.close().await;
            }
        }
    }

    /// Drops the Postgres database (the SQLite file goes with its temporary directory).
    pub async fn cleanup(self) {
        if let (Some(admin), Some(name)) = (&self.admin_url, &self.name)
            && let Ok(mut conn) = sqlx::PgConnection::connect(admin).await
        {
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut conn)
            .await;
            let _ = conn.close().await;
        }
    }
}

pub fn doc(id: &str) -> DocId {
    DocId::new(id).expect("valid document id")
}

/// A writer that produces a realistic mix of deltas: typing, deleting, counting, registers.
#[derive(Debug)]
pub struct Writer {
    pub document: Document,
    step: u64,
}

impl Writer {
    pub fn new(replica: u32) -> Self {
        Self {
            document: Document::new(ReplicaId::from_random(replica)),
            step: 0,
        }
    }

    /// The next delta; `choice` picks the kind of edit (any value is fine).
    pub fn next_delta(&mut self, choice: u32) -> Delta {
        self.step += 1;
        let len = self.document.text_len("text");
        let result = match choice % 8 {
            0..=3 => self
                .document
                .text_insert("text", (choice / 8) % (len + 1), "ab"),
            4 if len > 0 => self.document.text_delete("text", (choice / 8) % len, 1),
            5 => self
                .document
                .counter_increment("count", u64::from(choice % 5) + 1),
            6 => {
                let stamp = HlcTimestamp::new(self.step << 16, self.document.replica());
                self.document
                    .register_set("title", Value::String(format!("t{}", self.step)), stamp)
            }
            _ => self.document.text_insert("text", len, "z"),
        };
        result.expect("edit within range")
    }

    pub fn entry(&mut self, doc: &DocId, choice: u32) -> NewEntry {
        let delta = self.next_delta(choice);
        NewEntry::new(
            doc.clone(),
            &delta,
            self.step,
            self.document.replica(),
            None,
        )
    }
}

/// Whether two documents hold the same content.
pub fn same_content(a: &Document, b: &Document) -> bool {
    a.to_json() == b.to_json() && a.state() == b.state()
}
