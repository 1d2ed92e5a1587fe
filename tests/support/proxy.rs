//! A TCP proxy for fault tests: it forwards connections to an upstream and can "blackhole"
//! the ones whose first client bytes contain a marker (a Postgres `application_name`, say):
//! their sockets stay open but nothing passes in either direction any more, as when a NAT or
//! a load balancer silently drops a connection's state. New marked connections are swallowed
//! the same way while the blackhole is on. Other connections keep working.
//!
//! It can also play a dead host ([`Proxy::down`]): every connection is closed at its next
//! byte in either direction, and new ones are closed as soon as they are accepted.
#![allow(dead_code)] // each test file uses a part of it

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

pub struct Proxy {
    pub port: u16,
    state: Arc<State>,
    _runtime: tokio::runtime::Runtime,
}

struct State {
    upstream: SocketAddr,
    marker: Vec<u8>,
    blackhole: AtomicBool,
    down: AtomicBool,
    /// Marked connections accepted so far.
    marked: AtomicUsize,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub fn start(upstream: SocketAddr, marker: &str) -> Proxy {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State {
            upstream,
            marker: marker.as_bytes().to_vec(),
            blackhole: AtomicBool::new(false),
            down: AtomicBool::new(false),
            marked: AtomicUsize::new(0),
        });
        let accept_state = state.clone();
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(connection(client, accept_state.clone()));
            }
        });
        Proxy { port, state, _runtime: runtime }
    }

    /// A proxy in front of the Postgres server of `database_url` that marks the responder's
    /// LISTEN connection (`application_name` `jitocsp-listener`), and that URL made to go
    /// through it. Only the host and port change.
    pub fn for_listener(database_url: &str) -> (Proxy, String) {
        let after_at = database_url.split_once('@').map_or(database_url, |(_, rest)| rest);
        let host_port = after_at.split('/').next().unwrap();
        let proxy = Proxy::start(host_port.parse().unwrap(), "jitocsp-listener");
        let proxied = database_url.replacen(host_port, &format!("127.0.0.1:{}", proxy.port), 1);
        (proxy, proxied)
    }

    /// Starts or stops swallowing the traffic of marked connections.
    pub fn blackhole(&self, on: bool) {
        self.state.blackhole.store(on, Ordering::SeqCst);
    }

    /// Plays a dead host (on) or a live one again (off), for every connection, marked or not.
    pub fn down(&self, on: bool) {
        self.state.down.store(on, Ordering::SeqCst);
    }

    /// How many marked connections have been accepted (each reconnection adds one).
    pub fn marked_connections(&self) -> usize {
        self.state.marked.load(Ordering::SeqCst)
    }
}

async fn connection(client: TcpStream, state: Arc<State>) {
    if state.down.load(Ordering::SeqCst) {
        return;
    }
    let Ok(server) = TcpStream::connect(state.upstream).await else { return };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let marked = Arc::new(AtomicBool::new(false));
    tokio::spawn(pump(server_read, client_write, state.clone(), marked.clone(), false));
    pump(client_read, server_write, state, marked, true).await;
}

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    state: Arc<State>,
    marked: Arc<AtomicBool>,
    client: bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut first = client;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if state.down.load(Ordering::SeqCst) {
            break;
        }
        if first {
            // The client speaks first (a Postgres startup message names its application).
            first = false;
            if buf[..n].windows(state.marker.len()).any(|w| w == state.marker.as_slice()) {
                marked.store(true, Ordering::SeqCst);
                state.marked.fetch_add(1, Ordering::SeqCst);
            }
        }
        if marked.load(Ordering::SeqCst) && state.blackhole.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
