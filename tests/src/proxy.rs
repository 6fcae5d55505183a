//! A TCP proxy for end-to-end tests: between a server and PostgreSQL (to take the database
//! away and bring it back), or between a client and a node (to move the client to another
//! node, as a load balancer would).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// A TCP proxy on a fixed local address to a switchable upstream. `down` refuses connections
/// and cuts the open ones (as when the upstream stops), `up` answers on the same address again,
/// and `retarget` sends new connections elsewhere.
#[derive(Debug)]
pub struct TcpProxy {
    pub addr: SocketAddr,
    upstream: Arc<Mutex<SocketAddr>>,
    /// The accept loop and every proxied connection, aborted by `down`.
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl TcpProxy {
    pub async fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let proxy = TcpProxy {
            addr: listener.local_addr().expect("addr"),
            upstream: Arc::new(Mutex::new(upstream)),
            tasks: Arc::default(),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: TcpListener) {
        let (upstream, tasks) = (self.upstream.clone(), self.tasks.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = *upstream.lock().expect("upstream");
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
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

    /// Answers on the same address again.
    pub async fn up(&self) {
        let listener = TcpListener::bind(self.addr).await.expect("bind again");
        self.serve(listener);
    }

    /// New connections go to `upstream` from now on; open ones stay where they are.
    pub fn retarget(&self, upstream: SocketAddr) {
        *self.upstream.lock().expect("upstream") = upstream;
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
