//! What the bench needs to know of Y-Sweet (`y-sweet serve`, the Rust server of
//! jamsocket/y-sweet, built from crates.io by `cargo xtask bench`) beyond y-websocket itself.
//!
//! - **Document names** are `[A-Za-z0-9_-]+` (`validate_doc_name`), so the bench's
//!   `bench/NAME` becomes `bench-NAME` ([`doc_name`]). The socket is
//!   `ws://HOST/d/DOC/ws/DOC` (the document twice, "for Yjs compatibility": the y-websocket
//!   provider appends the name to the base URL it is given).
//! - **Documents are created first** with `POST /doc/new` `{"docId": DOC}`, once per document
//!   and server ([`Documents`]), before any socket opens on them. Without a server token a socket
//!   would create the document itself, but `get_or_create_doc` is check-then-insert: two sockets
//!   that open at once on a document it has not loaded each load one, the second replaces the
//!   first in its map, and the connections of the first never see the others' updates.
//! - **Readiness**: `serve` prints its connection string (`ys://127.0.0.1:PORT`) once its
//!   listener is bound; its INFO log line `Listening on ws://…` is not used, because the bench
//!   runs it with `RUST_LOG=warn`, as it runs Lattice (y-sweet logs several INFO lines per
//!   document and checkpoint).
//! - **Stopping** with what it holds on disk takes SIGINT: `serve` waits for Ctrl-C only, and
//!   SIGTERM kills it without its last checkpoint.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::sync::OnceCell;

use crate::http::HttpConn;

/// The version the bench is pinned to (`cargo xtask bench` installs exactly this one).
pub(crate) const VERSION: &str = "0.9.1";
/// How long one `POST /doc/new` may take (it loads the document from the store).
const CREATE_TIMEOUT: Duration = Duration::from_secs(60);

/// Y-Sweet's name for one of the bench's documents: `/` (not in its alphabet) becomes `-`.
pub(crate) fn doc_name(doc: &str) -> String {
    doc.replace('/', "-")
}

/// The y-websocket URL of `doc` on the server at `addr`.
pub(crate) fn socket_url(addr: SocketAddr, doc: &str) -> String {
    let name = doc_name(doc);
    format!("ws://{addr}/d/{name}/ws/{name}")
}

/// The address in `serve`'s connection-string line (`   ys://127.0.0.1:PORT`, maybe coloured).
pub(crate) fn parse_ready(line: &str) -> Option<SocketAddr> {
    let at = line.find("ys://")?;
    line[at + "ys://".len()..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect::<String>()
        .parse()
        .ok()
}

/// The documents created on one running server: each is created exactly once, and every
/// connection to it waits until it is.
#[derive(Debug, Default)]
pub(crate) struct Documents {
    created: Mutex<HashMap<String, Arc<OnceCell<()>>>>,
}

impl Documents {
    /// Creates `doc` on the server at `addr` unless this server already has it.
    pub(crate) async fn ensure(&self, addr: SocketAddr, doc: &str) -> Result<()> {
        let name = doc_name(doc);
        let cell = {
            let mut created = self
                .created
                .lock()
                .map_err(|_| anyhow::anyhow!("the document registry is poisoned"))?;
            created.entry(name.clone()).or_default().clone()
        };
        cell.get_or_try_init(|| create(addr, &name))
            .await
            .map(|_| ())
    }
}

/// `POST /doc/new` with `{"docId": name}`; the answer must name the document.
async fn create(addr: SocketAddr, name: &str) -> Result<()> {
    let body = serde_json::json!({ "docId": name }).to_string();
    let fut = async {
        let mut conn = HttpConn::connect(addr).await?;
        let head = conn
            .post("/doc/new", "application/json", body.as_bytes())
            .await?;
        let (answer, _) = conn.body(&head).await?;
        if head.status != 200 {
            bail!(
                "POST /doc/new {body} answered {}: {}",
                head.status,
                String::from_utf8_lossy(&answer)
            );
        }
        let answer: serde_json::Value =
            serde_json::from_slice(&answer).context("POST /doc/new answered no JSON")?;
        if answer["docId"] != name {
            bail!("POST /doc/new {body} answered {answer}");
        }
        Ok(())
    };
    tokio::time::timeout(CREATE_TIMEOUT, fut)
        .await
        .with_context(|| format!("POST /doc/new for {name} took over {CREATE_TIMEOUT:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_urls() {
        assert_eq!(
            doc_name("bench/trace-automerge-paper"),
            "bench-trace-automerge-paper"
        );
        let addr: SocketAddr = "127.0.0.1:4000".parse().expect("addr");
        assert_eq!(
            socket_url(addr, "bench/idle-7"),
            "ws://127.0.0.1:4000/d/bench-idle-7/ws/bench-idle-7"
        );
    }

    #[test]
    fn the_connection_string_is_the_ready_line() {
        let addr = parse_ready("   ys://127.0.0.1:43127").expect("plain");
        assert_eq!(addr.port(), 43127);
        let addr = parse_ready("   \u{1b}[95mys://127.0.0.1:8080\u{1b}[0m").expect("coloured");
        assert_eq!(addr.port(), 8080);
        assert_eq!(parse_ready("Listening on ws://127.0.0.1:1"), None);
    }
}
