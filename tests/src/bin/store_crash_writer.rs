//! Child process of the crash test (`tests/tests/store_crash.rs`): appends under load until it
//! is killed, printing `doc seq` for every append only after its future resolved, that is,
//! after the store reported it committed.
//!
//! Usage: `store_crash_writer <database-url> <writers> <docs>`

use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lattice_server::store::{Store, StoreConfig};
use lattice_tests::store_support::{Writer, doc};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .expect("usage: store_crash_writer URL WRITERS DOCS");
    let writers: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(16);
    let docs: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(4);
    let store = Store::open(
        &url,
        StoreConfig {
            // Checkpoints are written (and killed) under load too.
            checkpoint_every_updates: 64,
            // SQLite's journal drains in small slices all the time, so kills land in the
            // middle of drain cycles: the next open must skip what was moved already.
            journal_max_entries: 32,
            journal_slice_entries: 5,
            ..StoreConfig::default()
        },
    )
    .await
    .expect("open store");
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let pid = std::process::id();
    for w in 0..writers {
        let store = store.clone();
        let out = out.clone();
        tokio::spawn(async move {
            let id = doc(&format!("crash/{}", w % docs));
            let mut writer = Writer::new(pid.wrapping_mul(31).wrapping_add(w));
            let mut i = 0u32;
            loop {
                i = i.wrapping_add(7919);
                let seq = store.append(writer.entry(&id, i)).await.expect("append");
                let mut out = out.lock().expect("stdout");
                writeln!(out, "{id} {seq}").expect("stdout");
                out.flush().expect("stdout");
            }
        });
    }
    // A safety net: a child the parent forgot ends on its own.
    tokio::time::sleep(Duration::from_secs(60)).await;
}
