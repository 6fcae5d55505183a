//! Webhooks end to end (docs/webhooks.md): the real `lattice` binary as a child process, a real
//! HTTP receiver started here (axum on 127.0.0.1), documents written over the HTTP API.
//!
//! - retries: the receiver refuses the first deliveries, the test schedule retries until it
//!   accepts, the same event id every time, signatures valid under the endpoint's secret;
//! - crash: SIGKILL after an event's first failed attempt, and SIGKILL between a commit and the
//!   forming of its event; after a restart both are delivered, the first with the same id;
//! - coalescing: 1,000 updates in a burst make few events whose seq ranges cover 1..=1000
//!   exactly once;
//! - the SSRF guard refuses private targets without `--webhook-allow-private`;
//! - admin events (`document.deleted`, `document.undeleted`) and the CLI.
//!
//! The durable tests run on SQLite and, with `LATTICE_TEST_POSTGRES_URL` set, on Postgres too.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod webhook_support;
use webhook_support::{
    ALLOW, Backend, Db, Delivery, Receiver, Server, WAIT, assert_signed, author, backends,
    changed_for,
};

// ---------------------------------------------------------------------------------------------
// The tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_deliveries_are_retried_on_the_schedule_until_accepted() {
    for backend in backends() {
        let db = Db::new(backend).await;
        let receiver = Receiver::start(3).await;
        let server = Server::spawn(
            &db,
            &[
                ALLOW,
                "--webhook-retry-schedule",
                "300ms,300ms,300ms,300ms",
                "--webhook-coalesce",
                "100ms",
            ],
        )
        .await;
        let (id, secret) = server.add_endpoint(&receiver.url(), json!({})).await;
        let mut a = author(7);
        let seq = server
            .write("retry/doc", &a.text_insert("t", 0, "hi").expect("edit"))
            .await;
        assert_eq!(seq, 1);
        let seen = receiver
            .wait_for("a delivery accepted after 3 refusals", |s| {
                s.iter().any(|d| d.answered < 300)
            })
            .await;
        // Four attempts of one event: refused three times, then accepted.
        assert_eq!(seen.len(), 4, "{backend:?}");
        assert!(seen.iter().all(|d| d.id == seen[0].id), "one event id");
        assert_eq!(
            seen.iter().map(|d| d.answered).collect::<Vec<_>>(),
            [500, 500, 500, 204]
        );
        for pair in seen.windows(2) {
            // 300 ms ± 20 % jitter.
            let gap = pair[1].at - pair[0].at;
            assert!(gap >= Duration::from_millis(230), "retried after {gap:?}");
        }
        for d in &seen {
            assert_signed(d, &secret);
            assert_eq!(d.body, seen[0].body, "the same payload every time");
        }
        let event = seen[0].json();
        assert_eq!(event["type"], "document.changed");
        assert_eq!(event["data"]["document"], "retry/doc");
        assert_eq!(event["data"]["first_seq"], 1);
        assert_eq!(event["data"]["last_seq"], 1);
        assert_eq!(
            event["data"]["url"],
            format!("http://{}/v1/state/retry/doc", server.addr)
        );
        // The admin API shows the delivery with its attempts (recorded just after the answer).
        let started = Instant::now();
        let shown = loop {
            let (status, shown) = server
                .json("GET", &format!("/api/admin/webhooks/{id}"), Value::Null)
                .await;
            assert_eq!(status, 200);
            if shown["deliveries"][0]["status"] == "delivered" || started.elapsed() > WAIT {
                break shown;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let d = &shown["deliveries"][0];
        assert_eq!(d["id"], seen[0].id.as_str());
        assert_eq!(d["status"], "delivered", "{shown}");
        assert_eq!(d["attempts"], 4);
        assert_eq!(d["last_status"], 204);
        let (_, metrics) = server.request("GET", "/metrics", "text/plain", b"").await;
        let metrics = String::from_utf8_lossy(&metrics).to_string();
        for line in [
            "lattice_webhook_events_total 1",
            "lattice_webhook_attempts_total 4",
            "lattice_webhook_failed_attempts_total 3",
            "lattice_webhook_delivered_total 1",
        ] {
            assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
        }
        server.kill9().await;
        db.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_delivers_after_restart_with_the_same_event_id() {
    for backend in backends() {
        let db = Db::new(backend).await;
        // Refuse everything until told otherwise.
        let receiver = Receiver::start(usize::MAX).await;
        let flags = [
            ALLOW,
            "--webhook-retry-schedule",
            "1s,1s,1s,1s,1s",
            "--webhook-coalesce",
            "100ms",
        ];
        let server = Server::spawn(&db, &flags).await;
        let (_, secret) = server.add_endpoint(&receiver.url(), json!({})).await;
        let mut a = author(9);
        server
            .write("crash/formed", &a.text_insert("t", 0, "x").expect("edit"))
            .await;
        let first = receiver
            .wait_for("the first attempt", |s| !s.is_empty())
            .await[0]
            .clone();
        // SIGKILL with the event formed, attempted once and not delivered.
        server.kill9().await;
        receiver.fail_next.store(0, Ordering::SeqCst);

        // Now a commit whose event is not formed yet when the server dies: a coalescing
        // interval longer than the time to the kill.
        let slow = [
            ALLOW,
            "--webhook-retry-schedule",
            "1s,1s,1s,1s,1s",
            "--webhook-coalesce",
            "30s",
            "--webhook-max-delay",
            "30s",
        ];
        let server = Server::spawn(&db, &slow).await;
        let mut b = author(10);
        let seq = server
            .write("crash/unformed", &b.text_insert("t", 0, "y").expect("edit"))
            .await;
        assert_eq!(seq, 1);
        server.kill9().await;

        let server = Server::spawn(&db, &flags).await;
        let seen = receiver
            .wait_for("both events delivered after the restart", |s| {
                s.iter().any(|d| d.answered < 300 && d.id == first.id)
                    && changed_for(s, "crash/unformed")
                        .iter()
                        .any(|d| d.answered < 300)
            })
            .await;
        let redelivered = seen
            .iter()
            .find(|d| d.answered < 300 && d.id == first.id)
            .expect("redelivered");
        assert_eq!(redelivered.body, first.body, "the same event");
        assert_signed(redelivered, &secret);
        let unformed = changed_for(&seen, "crash/unformed");
        assert_eq!(unformed.len(), 1, "formed once, after the restart");
        assert_eq!(unformed[0].json()["data"]["first_seq"], 1);
        assert_eq!(unformed[0].json()["data"]["last_seq"], 1);
        // Nothing else was sent: every delivery is one of the two events.
        assert!(
            seen.iter()
                .all(|d| d.id == first.id || d.id == unformed[0].id)
        );
        server.kill9().await;
        db.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_a_thousand_updates_is_coalesced_into_few_events() {
    let db = Db::new(Backend::Sqlite).await;
    let receiver = Receiver::start(0).await;
    let server = Server::spawn(
        &db,
        &[
            ALLOW,
            "--webhook-coalesce",
            "500ms",
            "--webhook-max-delay",
            "2s",
        ],
    )
    .await;
    server.add_endpoint(&receiver.url(), json!({})).await;
    let server = Arc::new(server);
    let started = Instant::now();
    let writers: Vec<_> = (0..8u32)
        .map(|w| {
            let server = server.clone();
            tokio::spawn(async move {
                let mut a = author(100 + w);
                for i in 0..125 {
                    let d = a.text_insert(&format!("t{w}"), i, "z").expect("edit");
                    server.write("burst/doc", &d).await;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    let burst = started.elapsed();
    let seen = receiver
        .wait_for("every entry covered", |s| {
            changed_for(s, "burst/doc")
                .iter()
                .any(|d| d.json()["data"]["last_seq"] == 1000)
        })
        .await;
    let mut ranges: Vec<(u64, u64)> = changed_for(&seen, "burst/doc")
        .iter()
        .map(|d| {
            let j = d.json();
            (
                j["data"]["first_seq"].as_u64().expect("first"),
                j["data"]["last_seq"].as_u64().expect("last"),
            )
        })
        .collect();
    ranges.sort_unstable();
    // The ranges cover 1..=1000, each entry once.
    let mut next = 1;
    for (first, last) in &ranges {
        assert_eq!(*first, next, "ranges {ranges:?}");
        next = last + 1;
    }
    assert_eq!(next, 1001);
    // At most one event per max-delay window of the burst, plus the one after it.
    let bound = burst.as_millis() as usize / 2000 + 2;
    assert!(
        ranges.len() <= bound,
        "{} events for a {burst:?} burst (bound {bound}): {ranges:?}",
        ranges.len()
    );
    let authors = changed_for(&seen, "burst/doc")[0].json()["data"]["authors"].clone();
    assert!(authors.is_array(), "{authors}");
    eprintln!(
        "1,000 updates in {burst:?} became {} events: {ranges:?}",
        ranges.len()
    );
    Arc::try_unwrap(server).expect("one owner").kill9().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_targets_are_refused_without_the_flag() {
    let db = Db::new(Backend::Sqlite).await;
    let receiver = Receiver::start(0).await;
    let server = Server::spawn(&db, &[]).await;
    for url in [
        receiver.url(),
        "http://localhost:9/hook".to_owned(),
        "http://169.254.169.254/latest/meta-data".to_owned(),
        "http://10.0.0.1/".to_owned(),
        "http://[::1]:9/".to_owned(),
        "http://[fd00:ec2::254]/".to_owned(),
        "http://[::ffff:127.0.0.1]/".to_owned(),
    ] {
        let (status, answer) = server
            .json("POST", "/api/admin/webhooks", json!({ "url": url }))
            .await;
        assert_eq!(status, 400, "{url}: {answer}");
        assert_eq!(answer["error"], "refused_target", "{url}: {answer}");
    }
    for (body, code) in [
        (json!({ "url": "ftp://example.com/" }), "refused_target"),
        (
            json!({ "url": "http://u:p@example.com/" }),
            "refused_target",
        ),
        (
            json!({ "url": "https://example.com/", "events": ["document.exploded"] }),
            "bad_event_type",
        ),
        (
            json!({ "url": "https://example.com/", "secret": "not-a-secret" }),
            "bad_secret",
        ),
        (json!({ "nope": 1 }), "bad_body"),
    ] {
        let (status, answer) = server.json("POST", "/api/admin/webhooks", body).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"], code, "{answer}");
    }
    let (status, answer) = server.json("GET", "/api/admin/webhooks", Value::Null).await;
    assert_eq!(status, 200);
    assert_eq!(answer["endpoints"], json!([]), "nothing was added");
    server.kill9().await;
    // With the flag, the same receiver is accepted.
    let server = Server::spawn(&db, &[ALLOW]).await;
    server.add_endpoint(&receiver.url(), json!({})).await;
    server.kill9().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_events_filters_replay_and_the_cli() {
    let db = Db::new(Backend::Sqlite).await;
    let receiver = Receiver::start(0).await;
    let server = Server::spawn(&db, &[ALLOW, "--webhook-coalesce", "100ms"]).await;
    let base = format!("http://{}", server.addr);
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lattice"))
            .args(["admin", "--url", &base, "--json", "webhooks"])
            .args(args)
            .output()
            .expect("run lattice admin");
        assert!(
            out.status.success(),
            "lattice admin webhooks {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).expect("JSON output")
    };
    // Written before the endpoint exists: only later entries reach it.
    let mut early = author(20);
    server
        .write("team/old", &early.text_insert("t", 0, "old").expect("edit"))
        .await;
    let url = receiver.url();
    let added = cli(&["add", &url, "--doc-pattern", "team/*"]);
    let id = added["endpoint"]["id"].as_str().expect("id").to_owned();
    assert!(
        added["secret"]
            .as_str()
            .is_some_and(|s| s.starts_with("whsec_"))
    );
    let listed = cli(&["list"]);
    assert_eq!(listed["endpoints"][0]["id"], id.as_str());

    // Only documents under the pattern.
    let mut a = author(21);
    server
        .write("other/doc", &a.text_insert("t", 0, "no").expect("edit"))
        .await;
    let mut b = author(22);
    server
        .write("team/doc", &b.text_insert("t", 0, "a").expect("edit"))
        .await;
    server
        .write("team/doc", &b.text_insert("t", 1, "b").expect("edit"))
        .await;
    let last_seq = |s: &[Delivery]| {
        changed_for(s, "team/doc")
            .iter()
            .filter_map(|d| d.json()["data"]["last_seq"].as_u64())
            .max()
    };
    receiver
        .wait_for("team/doc changed up to seq 2", |s| last_seq(s) == Some(2))
        .await;
    server
        .write("team/old", &early.text_insert("t", 3, "new").expect("edit"))
        .await;
    let seen = receiver
        .wait_for("team/old changed", |s| {
            !changed_for(s, "team/old").is_empty()
        })
        .await;
    let old = changed_for(&seen, "team/old");
    assert_eq!(old.len(), 1);
    assert_eq!(
        old[0].json()["data"]["first_seq"],
        2,
        "nothing from before the endpoint"
    );
    assert_eq!(old[0].json()["data"]["last_seq"], 2);

    // Soft delete and undelete through the admin API.
    let (status, _) = server
        .json("POST", "/api/admin/delete/team/doc", Value::Null)
        .await;
    assert_eq!(status, 200);
    let (status, _) = server
        .json("POST", "/api/admin/undelete/team/doc", Value::Null)
        .await;
    assert_eq!(status, 200);
    let seen = receiver
        .wait_for("deleted and undeleted", |s| {
            let types: Vec<Value> = s.iter().map(|d| d.json()["type"].clone()).collect();
            types.contains(&json!("document.deleted"))
                && types.contains(&json!("document.undeleted"))
        })
        .await;
    assert!(
        seen.iter()
            .all(|d| d.json()["data"]["document"] != "other/doc"),
        "nothing outside the pattern"
    );
    // Restore to version 1: a new entry, announced as document.restored.
    let (status, restored) = server
        .json("POST", "/api/admin/restore/team/doc", json!({ "to": 1 }))
        .await;
    assert_eq!(status, 200, "{restored}");
    let seen = receiver
        .wait_for("restored", |s| {
            s.iter().any(|d| d.json()["type"] == "document.restored")
        })
        .await;
    let restored_event = seen
        .iter()
        .find(|d| d.json()["type"] == "document.restored")
        .expect("restored")
        .json();
    assert_eq!(restored_event["data"]["seq"], 3);
    receiver
        .wait_for("the restore's entry as a change", |s| {
            last_seq(s) == Some(3)
        })
        .await;

    // Replay from seq 1: the entries are sent again, as one event for 1..=3.
    let replayed = cli(&["replay", &id, "--from-seq", "1", "--doc", "team/doc"]);
    assert_eq!(replayed["cursors_moved"], 1);
    receiver
        .wait_for("the replay", |s| {
            changed_for(s, "team/doc").iter().any(|d| {
                let j = d.json();
                j["data"]["first_seq"] == 1 && j["data"]["last_seq"] == 3
            })
        })
        .await;

    // Show, rotate and remove.
    let shown = cli(&["show", &id]);
    // At least: the changes (one or two events), the delete, the undelete.
    assert!(
        shown["deliveries"].as_array().is_some_and(|d| d.len() >= 3),
        "{shown}"
    );
    let rotated = cli(&["rotate", &id]);
    assert!(
        rotated["secret"]
            .as_str()
            .is_some_and(|s| s.starts_with("whsec_"))
    );
    cli(&["remove", &id]);
    assert_eq!(cli(&["list"])["endpoints"], json!([]));
    server.kill9().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_failing_too_long_is_disabled_and_can_be_enabled_again() {
    let db = Db::new(Backend::Sqlite).await;
    let receiver = Receiver::start(usize::MAX).await;
    let server = Server::spawn(
        &db,
        &[
            ALLOW,
            "--webhook-coalesce",
            "50ms",
            "--webhook-retry-schedule",
            "100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms",
            "--webhook-disable-after",
            "400ms",
        ],
    )
    .await;
    let (id, _) = server.add_endpoint(&receiver.url(), json!({})).await;
    let mut a = author(31);
    server
        .write("dead/doc", &a.text_insert("t", 0, "x").expect("edit"))
        .await;
    let started = Instant::now();
    let shown = loop {
        let (_, shown) = server
            .json("GET", &format!("/api/admin/webhooks/{id}"), Value::Null)
            .await;
        if !shown["endpoint"]["disabled_at_ms"].is_null() {
            break shown;
        }
        assert!(started.elapsed() < WAIT, "never disabled: {shown}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        shown["endpoint"]["disabled_reason"]
            .as_str()
            .is_some_and(|r| r.contains("answered 500")),
        "{shown}"
    );
    assert_eq!(
        shown["deliveries"][0]["status"], "pending",
        "kept, not given up"
    );
    // Disabled: nothing more is sent, even while its event stays due.
    let attempts = receiver.deliveries().len();
    assert!(
        (2..=12).contains(&attempts),
        "{attempts} attempts before disabling"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.deliveries().len(), attempts);
    let (_, metrics) = server.request("GET", "/metrics", "text/plain", b"").await;
    assert!(
        String::from_utf8_lossy(&metrics)
            .lines()
            .any(|l| l == "lattice_webhook_endpoints_disabled_total 1")
    );
    // Enabled again, with a receiver that accepts: the pending event arrives.
    receiver.fail_next.store(0, Ordering::SeqCst);
    let (status, _) = server
        .json(
            "POST",
            &format!("/api/admin/webhooks/{id}/enable"),
            Value::Null,
        )
        .await;
    assert_eq!(status, 200);
    let seen = receiver
        .wait_for("the delivery after enabling", |s| {
            s.iter().any(|d| d.answered < 300)
        })
        .await;
    assert!(
        seen.iter().all(|d| d.id == seen[0].id),
        "one event throughout"
    );
    server.kill9().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_endpoint_does_not_slow_document_writes() {
    let db = Db::new(Backend::Sqlite).await;
    let receiver = Receiver::start(0).await;
    receiver.hang.store(true, Ordering::SeqCst);
    let server = Server::spawn(
        &db,
        &[
            ALLOW,
            "--webhook-coalesce",
            "20ms",
            "--webhook-max-delay",
            "50ms",
            "--webhook-timeout",
            "60s",
            "--webhook-concurrency",
            "2",
            "--webhook-per-endpoint",
            "2",
        ],
    )
    .await;
    server.add_endpoint(&receiver.url(), json!({})).await;
    // Fill every delivery slot with a request that never gets an answer.
    // A fresh author per write: each delta stands alone, whatever document it goes to.
    let edit = |n: u32| author(1000 + n).text_insert("t", 0, "x").expect("edit");
    for (i, doc) in ["hang/a", "hang/b", "hang/c"].iter().enumerate() {
        server.write(doc, &edit(i as u32)).await;
    }
    receiver
        .wait_for("two hanging deliveries", |s| s.len() >= 2)
        .await;
    // Writes go on at full speed while the deliverer is stuck: each one committed promptly.
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    for i in 0..200u32 {
        let doc = format!("hang/doc{}", i % 20);
        let t = Instant::now();
        server.write(&doc, &edit(10 + i)).await;
        slowest = slowest.max(t.elapsed());
    }
    let total = started.elapsed();
    assert!(
        slowest < Duration::from_secs(1),
        "a write took {slowest:?} while the endpoint hung"
    );
    assert!(total < Duration::from_secs(20), "200 writes took {total:?}");
    assert_eq!(receiver.deliveries().len(), 2, "the slots stay taken");
    let (_, metrics) = server.request("GET", "/metrics", "text/plain", b"").await;
    assert!(
        String::from_utf8_lossy(&metrics)
            .lines()
            .any(|l| l == "lattice_webhook_in_flight 2"),
        "two deliveries in flight"
    );
    eprintln!("200 writes in {total:?} (slowest {slowest:?}) with a hanging endpoint");
    server.kill9().await;
    db.cleanup().await;
}

/// Many documents changed at once, a receiver that accepts every delivery: each document's
/// event arrives exactly once. (The deliverer used to read a batch of due events, and an event
/// whose attempt was recorded while that batch waited for a slot was sent a second time.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_events_are_delivered_once_under_load() {
    const DOCS: u32 = 600;
    let db = Db::new(Backend::Sqlite).await;
    let receiver = Receiver::start(0).await;
    let server = Server::spawn(&db, &[ALLOW, "--webhook-coalesce", "20ms"]).await;
    server.add_endpoint(&receiver.url(), json!({})).await;
    let server = Arc::new(server);
    let writers: Vec<_> = (0..8u32)
        .map(|w| {
            let server = server.clone();
            tokio::spawn(async move {
                for i in (w..DOCS).step_by(8) {
                    let d = author(5000 + i).text_insert("t", 0, "x").expect("edit");
                    server.write(&format!("once/{i}"), &d).await;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    let distinct = |s: &[Delivery]| {
        s.iter()
            .map(|d| d.id.clone())
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    receiver
        .wait_for("an event per document", |s| distinct(s) >= DOCS as usize)
        .await;
    // A duplicate would follow its first delivery within a round of the deliverer.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = receiver.deliveries();
    let mut per_id = std::collections::HashMap::<&str, usize>::new();
    for d in &seen {
        *per_id.entry(d.id.as_str()).or_default() += 1;
    }
    let repeated: Vec<_> = per_id.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "{} deliveries of {} events; sent more than once: {:?}",
        seen.len(),
        per_id.len(),
        &repeated[..repeated.len().min(10)]
    );
    assert_eq!(per_id.len(), DOCS as usize, "one event per document");
    Arc::try_unwrap(server).expect("one owner").kill9().await;
    db.cleanup().await;
}
