//! The heap an idle WebSocket connection holds, on every protocol (`/v1/sync`, `/yjs` and
//! `/hocuspocus`).
//!
//! A counting global allocator measures the live heap of a real server (`run` on 127.0.0.1:0,
//! SQLite) before and after `N` more connections, each upgraded, subscribed to one of a few
//! documents that are already live, synced, and then left idle. The clients are blocking
//! sockets that speak the bytes by hand, so what they allocate is freed at once: the growth
//! is the server's. The stages are measured apart (the upgrade, then the handshake and the
//! subscription), and the total is held under a budget, so a change that makes every idle
//! connection heavier fails here rather than in the benchmark (`cargo xtask bench idle`, which
//! measures the process's resident memory instead: this heap, plus what the allocator keeps
//! around it). `--nocapture` prints the figures.

use std::alloc::System;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use lattice_engine::protocol::{ClientMsg, PROTOCOL_VERSION, ServerMsg};
use lattice_engine::{DocId, DocState};
use lattice_server::config::Config;
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Connections measured per protocol.
const CONNECTIONS: usize = 400;
/// Documents they spread over (live before the measurement, so no room is counted).
const DOCS: usize = 4;
/// Heap one idle connection may hold, upgrade to synced subscription, all included (about
/// 4.2 KB native, 4.0 KB y-websocket when it was set; 4.3 KB Hocuspocus with one document).
/// The target for the resident memory the benchmark measures is 6 KB: this heap, plus the
/// allocator's own overhead around it.
const BUDGET_BYTES: f64 = 4608.0;
/// Time for tasks that end (an HTTP connection after its upgrade) to end before a reading.
const SETTLE: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Protocol {
    Native,
    Yjs,
    Hocuspocus,
}

/// Bytes on the heap now (allocated, less freed, plus what reallocations added).
fn live_bytes() -> isize {
    let s = GLOBAL.stats();
    s.bytes_allocated as isize - s.bytes_deallocated as isize + s.bytes_reallocated
}

fn live_blocks() -> isize {
    let s = GLOBAL.stats();
    s.allocations as isize - s.deallocations as isize
}

/// A client frame: binary, final, masked as RFC 6455 requires of clients.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x82];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = [0x12, 0x34, 0x56, 0x78];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Reads one server frame (unmasked); its opcode and payload.
fn read_frame(socket: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    socket.read_exact(&mut head).expect("frame header");
    let len = match head[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            socket.read_exact(&mut b).expect("length");
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            socket.read_exact(&mut b).expect("length");
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    let mut payload = vec![0u8; usize::try_from(len).expect("length")];
    socket.read_exact(&mut payload).expect("payload");
    (head[0] & 0x0f, payload)
}

/// The next binary frame's payload (a ping from the server is skipped).
fn read_binary(socket: &mut TcpStream) -> Vec<u8> {
    loop {
        match read_frame(socket) {
            (0x2, payload) => return payload,
            (0x9 | 0xa, _) => continue,
            (op, _) => panic!("unexpected frame, opcode {op}"),
        }
    }
}

/// Opens a socket and upgrades it on `path`; returns once the 101 is read.
fn upgrade(addr: SocketAddr, path: &str) -> TcpStream {
    let mut socket = TcpStream::connect(addr).expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).expect("request");
    let mut response = Vec::new();
    let mut byte = [0u8; 1];
    while !response.ends_with(b"\r\n\r\n") {
        socket.read_exact(&mut byte).expect("response");
        response.push(byte[0]);
    }
    assert!(
        response.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&response)
    );
    socket
}

fn path(protocol: Protocol, doc: usize) -> String {
    match protocol {
        Protocol::Native => "/v1/sync".to_owned(),
        Protocol::Yjs => format!("/yjs/idle-{doc}"),
        Protocol::Hocuspocus => "/hocuspocus".to_owned(),
    }
}

/// Says hello and subscribes (native), or sends sync step 1 (y-websocket); returns once the
/// connection is synced.
fn subscribe(socket: &mut TcpStream, protocol: Protocol, doc: usize, replica: u32) {
    match protocol {
        Protocol::Native => {
            let hello = ClientMsg::Hello {
                protocol: PROTOCOL_VERSION,
                token: None,
                agent: None,
                replica: Some(replica),
            };
            let subscribe = ClientMsg::Subscribe {
                doc: DocId::new(format!("idle-{doc}")).expect("doc id"),
                state: DocState::default(),
            };
            let mut bytes = frame(&hello.encode());
            bytes.extend(frame(&subscribe.encode()));
            socket.write_all(&bytes).expect("hello");
            let welcome = ServerMsg::decode(&read_binary(socket), usize::MAX).expect("welcome");
            assert!(matches!(welcome, ServerMsg::Welcome { .. }), "{welcome:?}");
            let sync = ServerMsg::decode(&read_binary(socket), usize::MAX).expect("sync");
            assert!(matches!(sync, ServerMsg::Sync { .. }), "{sync:?}");
        }
        Protocol::Yjs => {
            let step1 = lattice_engine::yws::encode_sync_step1(&[]);
            socket.write_all(&frame(&step1)).expect("step 1");
            // The room answers with sync step 2 and its own step 1.
            for _ in 0..2 {
                read_binary(socket);
            }
        }
        Protocol::Hocuspocus => {
            use lattice_engine::hocuspocus as hp;
            let name = format!("idle-{doc}");
            let mut bytes = frame(&hp::encode_token(&name, "", Some("4.7.0")));
            bytes.extend(frame(&hp::encode_sync_step1(&name, &[])));
            socket.write_all(&bytes).expect("token and step 1");
            // `authenticated`, then the room's sync step 2 and step 1.
            for _ in 0..3 {
                read_binary(socket);
            }
        }
    }
}

/// What `CONNECTIONS` idle connections of `protocol` added to the heap, per connection.
#[derive(Debug)]
struct PerConnection {
    upgraded_bytes: f64,
    subscribed_bytes: f64,
    blocks: f64,
}

impl PerConnection {
    fn total(&self) -> f64 {
        self.upgraded_bytes + self.subscribed_bytes
    }
}

fn measure(addr: SocketAddr, protocol: Protocol) -> PerConnection {
    // Rooms and everything a first connection starts are live before the first reading.
    let mut warm: Vec<TcpStream> = Vec::new();
    for i in 0..DOCS * 2 {
        let mut socket = upgrade(addr, &path(protocol, i % DOCS));
        subscribe(&mut socket, protocol, i % DOCS, 1_000 + i as u32);
        warm.push(socket);
    }
    let mut sockets: Vec<TcpStream> = Vec::with_capacity(CONNECTIONS);
    std::thread::sleep(SETTLE);
    let (bytes0, blocks0) = (live_bytes(), live_blocks());
    for i in 0..CONNECTIONS {
        sockets.push(upgrade(addr, &path(protocol, i % DOCS)));
    }
    std::thread::sleep(SETTLE);
    let bytes1 = live_bytes();
    for (i, socket) in sockets.iter_mut().enumerate() {
        subscribe(socket, protocol, i % DOCS, 10_000 + i as u32);
    }
    std::thread::sleep(SETTLE);
    let (bytes2, blocks2) = (live_bytes(), live_blocks());
    let n = CONNECTIONS as f64;
    drop(sockets);
    drop(warm);
    PerConnection {
        upgraded_bytes: (bytes1 - bytes0) as f64 / n,
        subscribed_bytes: (bytes2 - bytes1) as f64 / n,
        blocks: (blocks2 - blocks0) as f64 / n,
    }
}

/// A server on its own runtime (two workers, as on the benchmark machine) for `f`.
fn with_server<T>(f: impl FnOnce(SocketAddr) -> T) -> T {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        database_url: format!("sqlite://{}", dir.path().join("idle.db").display()),
        ..Config::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = runtime.spawn(lattice_server::run(config, listener, async {
        let _ = stopped.await;
    }));
    let out = f(addr);
    let _ = stop.send(());
    runtime
        .block_on(server)
        .expect("server task")
        .expect("server run");
    out
}

#[test]
fn an_idle_connection_holds_little_heap_on_every_protocol() {
    let measured: Vec<(Protocol, PerConnection)> =
        [Protocol::Native, Protocol::Yjs, Protocol::Hocuspocus]
            .into_iter()
            .map(|protocol| (protocol, with_server(|addr| measure(addr, protocol))))
            .collect();
    for (protocol, m) in &measured {
        println!(
            "{protocol:?}: {:.0} B per idle connection ({:.0} B after the upgrade, {:.0} B more \
             once subscribed and synced), {:.1} heap blocks",
            m.total(),
            m.upgraded_bytes,
            m.subscribed_bytes,
            m.blocks
        );
    }
    for (protocol, m) in &measured {
        assert!(
            m.total() <= BUDGET_BYTES,
            "{protocol:?}: an idle connection holds {:.0} B of heap, over the budget of {} B \
             ({m:?})",
            m.total(),
            BUDGET_BYTES
        );
    }
}
