//! A TCP proxy for end-to-end tests: between a server and PostgreSQL (to take the database
//! away and bring it back), or between a client and a node (to move the client to another
//! node, as a load balancer would).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

/// A TCP proxy on a fixed local address to a switchable upstream. `down` refuses connections
/// and cuts the open ones (as when the upstream stops), `up` answers on the same address again,
/// `stall` holds every byte in flight without closing anything (a hung upstream) until
/// `unstall`, and `retarget` sends new connections elsewhere.
#[derive(Debug)]
pub struct TcpProxy {
    pub addr: SocketAddr,
    upstream: Arc<Mutex<SocketAddr>>,
    /// The accept loop and every proxied connection, aborted by `down`.
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
    stalled: watch::Sender<bool>,
}

impl TcpProxy {
    pub async fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let proxy = TcpProxy {
            addr: listener.local_addr().expect("addr"),
            upstream: Arc::new(Mutex::new(upstream)),
            tasks: Arc::default(),
            stalled: watch::Sender::new(false),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: TcpListener) {
        let (upstream, tasks) = (self.upstream.clone(), self.tasks.clone());
        let stalled = self.stalled.clone();
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let target = *upstream.lock().expect("upstream");
                let stalled = stalled.subscribe();
                let conn = tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(target).await {
                        let (in_read, in_write) = inbound.into_split();
                        let (out_read, out_write) = outbound.into_split();
                        // Either side's end ends both directions.
                        tokio::select! {
                            _ = pump(in_read, out_write, stalled.clone()) => {}
                            _ = pump(out_read, in_write, stalled) => {}
                        }
                    }
                });
                tasks.lock().expect("tasks").push(conn.abort_handle());
            }
        });
        self.tasks
            .lock()
            .expect("tasks")
            .push(accept.abort_handle());
    }

    /// Stops listening and cuts every connection.
    pub fn down(&self) {
        for task in self.tasks.lock().expect("tasks").drain(..) {
            task.abort();
        }
    }

    /// Holds every byte in flight, both ways, until `unstall`: the connections stay open.
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Forwards again what `stall` held.
    pub fn unstall(&self) {
        self.stalled.send_replace(false);
    }

    /// Answers on the same address again.
    pub async fn up(&self) {
        // The aborted accept task lets go of the old listener when it is next polled.
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(e) if tries < 100 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("bind again: {e}"),
            }
        };
        self.serve(listener);
    }

    /// New connections go to `upstream` from now on; open ones stay where they are.
    pub fn retarget(&self, upstream: SocketAddr) {
        *self.upstream.lock().expect("upstream") = upstream;
    }
}

/// Copies `from` to `to`, holding what it read while `stalled`; returns at the end of either.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut stalled: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stalled.wait_for(|s| !*s).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// `url` (`scheme://user:pw@host:port/db…`) with its host and port replaced by `addr`, and the
/// address it named.
pub fn through(url: &str, addr: SocketAddr) -> (String, SocketAddr) {
    let at = url.find('@').expect("user in the URL") + 1;
    let slash = at + url[at..].find('/').expect("database in the URL");
    let upstream = url[at..slash]
        .parse::<SocketAddr>()
        .or_else(|_| {
            url[at..slash]
                .replace("localhost", "127.0.0.1")
                .parse::<SocketAddr>()
        })
        .expect("host:port of the test database");
    (format!("{}{addr}{}", &url[..at], &url[slash..]), upstream)
}
