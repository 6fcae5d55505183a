//! The database going away under a live server and coming back, without restarting the
//! server: nothing is acknowledged while it is away, nothing acknowledged is lost, `/readyz`
//! says so promptly, and clients carry on by themselves once it is back. (`cargo xtask chaos`
//! does the same with a real PostgreSQL stopping and a disk filling up; this is the fast,
//! deterministic version that runs with every test run.)
//!
//! The server reaches PostgreSQL through a TCP proxy of the test's own, so "down" is a refused
//! connection (and every open one cut), as when PostgreSQL stops, and "up" is the same address
//! answering again.

use std::time::{Duration, Instant};

use lattice_tests::proxy::{TcpProxy as Proxy, through};
use lattice_tests::server_support::{TestServer, client, config, doc, http_get, settled};
use lattice_tests::store_support::{Kind, TestDb};

/// Before: a room whose commit failed reloaded its document from the store; when that failed
/// too (the database still down), it carried on with the document holding the refused delta,
/// served it to the sender's resync (so the client stopped resending it) and committed the
/// sender's next edits on top of it. Those were acknowledged, but the store lacked what they
/// built on, so they were never visible: `three;` was acknowledged and lost. Now the room stops
/// instead, and the next subscriber starts a new room from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_loses_no_acknowledged_edit_and_the_server_recovers_by_itself() {
    let db = TestDb::new(Kind::Postgres).await;
    let (_, upstream) = through(&db.url, "127.0.0.1:1".parse().expect("addr"));
    let proxy = Proxy::start(upstream).await;
    let (url, _) = through(&db.url, proxy.addr);
    let mut cfg = config(&db);
    cfg.database_url = url;
    // A write waits this long for a connection before it fails; /readyz must answer sooner.
    cfg.store.busy_timeout = Duration::from_secs(4);
    let server = TestServer::start(cfg).await;
    let d = doc("outage");
    let a = client(&server.ws_url(), 21);
    a.open(&d, Vec::new()).await.expect("open");
    settled(&a, &d).await;
    let append = |s: &'static str| {
        move |doc: &mut lattice_engine::Document, _: &mut lattice_engine::ClockedHlc| {
            let at = doc.text_len("t");
            doc.text_insert("t", at, s)
        }
    };
    a.edit(&d, append("one;")).await.expect("edit");
    settled(&a, &d).await;

    proxy.down();
    let asked = Instant::now();
    let ready = http_get(server.addr, "/readyz", None).await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "/readyz took {:?} to say the store is down",
        asked.elapsed()
    );
    a.edit(&d, append("two;")).await.expect("edit");
    // The commit waits for a connection, fails, the room cannot reload: no ack meanwhile.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        a.pending(&d),
        1,
        "the edit stopped being pending while the database was down: acknowledged, or served \
         back to the client by a room that never stored it"
    );

    proxy.up().await;
    let resumed = a
        .wait_until(Duration::from_secs(60), |s| {
            s.is_synced(&d) && s.pending(&d) == 0
        })
        .await;
    assert!(
        resumed,
        "the client did not get its edit acknowledged after the outage"
    );
    a.edit(&d, append("three;")).await.expect("edit");
    settled(&a, &d).await;
    assert_eq!(http_get(server.addr, "/readyz", None).await.status, 200);

    // What the store holds (GET loads the document from it, not from the room).
    let stored = http_get(server.addr, "/v1/docs/outage", None).await.json();
    assert_eq!(
        stored["texts"]["t"], "one;two;three;",
        "an acknowledged edit is not in the stored document"
    );
    a.stop();
    server.shutdown().await;
    db.cleanup().await;
}
