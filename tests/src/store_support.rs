//! Fresh databases for store tests, on SQLite (a temporary file) or Postgres (a new database
//! per test on the server named by `LATTICE_TEST_POSTGRES_URL`, dropped afterwards, so tests
//! run in parallel). Postgres tests never skip: without the variable they fail and say why.

use std::ops::RangeInclusive;
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

    /// Overwrites the stored delta of every drained log entry of `doc` in `seqs` with `bytes`,
    /// straight in the database (drain the SQLite journal first): damage an older build could
    /// have left behind. On SQLite it rewrites the `update_runs` rows holding them, decoding
    /// and encoding them with [`RunCodec`], this crate's own reading of the format documented
    /// in docs/storage.md. Returns how many entries it changed.
    pub async fn corrupt_deltas(&self, doc: &str, seqs: RangeInclusive<u64>, bytes: &[u8]) -> u64 {
        let (lo, hi) = (
            i64::try_from(*seqs.start()).expect("seq"),
            i64::try_from(*seqs.end()).expect("seq"),
        );
        match self.kind {
            Kind::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.url)
                    .await
                    .expect("connect");
                let done = sqlx::query(
                    "UPDATE updates SET delta = $1 WHERE doc_id = $2 AND seq BETWEEN $3 AND $4",
                )
                .bind(bytes)
                .bind(doc)
                .bind(lo)
                .bind(hi)
                .execute(&mut conn)
                .await
                .expect("update");
                let _ = conn.close().await;
                done.rows_affected()
            }
            Kind::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.url)
                    .await
                    .expect("connect");
                let runs: Vec<(i64, i64, Vec<u8>)> = sqlx::query_as(
                    "SELECT first_seq, last_seq, entries FROM update_runs \
                     WHERE doc_id = $1 AND last_seq >= $2 AND first_seq <= $3",
                )
                .bind(doc)
                .bind(lo)
                .bind(hi)
                .fetch_all(&mut conn)
                .await
                .expect("select runs");
                let mut changed = 0;
                for (first, last, blob) in runs {
                    let mut entries = RunCodec::decode(&blob);
                    assert_eq!(
                        entries.len() as i64,
                        last - first + 1,
                        "run {first}..={last}"
                    );
                    for (i, e) in entries.iter_mut().enumerate() {
                        if seqs.contains(&(first as u64 + i as u64)) {
                            e.delta = bytes.to_vec();
                            changed += 1;
                        }
                    }
                    sqlx::query(
                        "UPDATE update_runs SET entries = $1 WHERE doc_id = $2 AND first_seq = $3",
                    )
                    .bind(RunCodec::encode(&entries))
                    .bind(doc)
                    .bind(first)
                    .execute(&mut conn)
                    .await
                    .expect("update run");
                }
                let _ = conn.close().await;
                changed
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

/// Loads `id` and checks its head and content.
pub async fn assert_loads(store: &Store, id: &DocId, head: u64, expected: &Document) {
    let loaded = store
        .load(id, ReplicaId::from_random(0x5e11))
        .await
        .expect("load")
        .expect("exists");
    assert_eq!(loaded.head_seq, head, "{id}");
    assert!(same_content(&loaded.document, expected), "{id}");
}

/// A store configuration that checkpoints only when a test asks (`checkpoint_now`), so what
/// the log and the checkpoints hold is predictable.
pub fn manual_checkpoints() -> StoreConfig {
    StoreConfig {
        checkpoint_every_updates: 0,
        checkpoint_every_bytes: 0,
        ..StoreConfig::default()
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

/// One entry of an SQLite log run, as docs/storage.md describes the `update_runs.entries`
/// blob: version byte 1, then per entry (big-endian) u64 hlc, u32 replica, u64 commit time in
/// ms, u8 author flag [u32 length, UTF-8], u32 length, delta bytes; or version byte 2, a u32
/// length and a zstd frame holding exactly that many bytes of the same entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunCodec {
    pub hlc: u64,
    pub replica: u32,
    pub committed_at_ms: u64,
    pub author: Option<String>,
    pub delta: Vec<u8>,
}

impl RunCodec {
    /// Decodes a whole blob; panics (a test failure) on anything but the documented layout.
    pub fn decode(blob: &[u8]) -> Vec<RunCodec> {
        fn take<'a>(b: &mut &'a [u8], n: usize) -> &'a [u8] {
            assert!(b.len() >= n, "run blob truncated");
            let (head, rest) = b.split_at(n);
            *b = rest;
            head
        }
        fn u32_of(b: &mut &[u8]) -> u32 {
            u32::from_be_bytes(take(b, 4).try_into().expect("4 bytes"))
        }
        fn u64_of(b: &mut &[u8]) -> u64 {
            u64::from_be_bytes(take(b, 8).try_into().expect("8 bytes"))
        }
        let mut b = blob;
        let unpacked;
        match take(&mut b, 1)[0] {
            1 => {}
            2 => {
                let n = u32_of(&mut b) as usize;
                unpacked = zstd::bulk::decompress(b, n).expect("a zstd frame");
                assert_eq!(unpacked.len(), n, "compressed run length");
                b = &unpacked;
            }
            v => panic!("run format version {v}"),
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            let hlc = u64_of(&mut b);
            let replica = u32_of(&mut b);
            let committed_at_ms = u64_of(&mut b);
            let author = match take(&mut b, 1)[0] {
                0 => None,
                1 => {
                    let n = u32_of(&mut b) as usize;
                    Some(String::from_utf8(take(&mut b, n).to_vec()).expect("UTF-8 author"))
                }
                f => panic!("author flag {f}"),
            };
            let n = u32_of(&mut b) as usize;
            let delta = take(&mut b, n).to_vec();
            out.push(RunCodec {
                hlc,
                replica,
                committed_at_ms,
                author,
                delta,
            });
        }
        out
    }

    pub fn encode(entries: &[RunCodec]) -> Vec<u8> {
        let mut out = vec![1u8];
        for e in entries {
            out.extend_from_slice(&e.hlc.to_be_bytes());
            out.extend_from_slice(&e.replica.to_be_bytes());
            out.extend_from_slice(&e.committed_at_ms.to_be_bytes());
            match &e.author {
                Some(a) => {
                    out.push(1);
                    out.extend_from_slice(&(a.len() as u32).to_be_bytes());
                    out.extend_from_slice(a.as_bytes());
                }
                None => out.push(0),
            }
            out.extend_from_slice(&(e.delta.len() as u32).to_be_bytes());
            out.extend_from_slice(&e.delta);
        }
        out
    }
}

/// Declares, for each `async fn name(db: TestDb)` listed, a test `sqlite::name` and a test
/// `postgres::name` that run it against a fresh database of that backend.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(lattice_tests::store_support::TestDb::new(lattice_tests::store_support::Kind::Sqlite).await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(lattice_tests::store_support::TestDb::new(lattice_tests::store_support::Kind::Postgres).await).await;
                }
            )*
        }
    };
}
