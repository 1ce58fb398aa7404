//! The listen backlog (`limits.listen_backlog`, 1024 by default; tokio's and std's `bind` use
//! 128, which overflowed at a 700-connection burst).
//!
//! To make the backlog observable without timing, the server runs with a connection cap of 1
//! and one idle connection holding it, so the accept loop is parked: every connection of the
//! burst must then complete its handshake in the kernel's accept queue alone. A connection the
//! queue cannot hold has its SYN dropped and stays unconnected (the client would retransmit
//! after 1 s, then 3 s). Then the idle connection leaves and every queued one is answered.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::config;
use dockerproxy_server::{ServerOptions, ServerState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

const BURST: usize = 700;

/// Starts a server whose accept loop holds at most one connection, bound with `backlog`.
async fn start(backlog: u32) -> (SocketAddr, oneshot::Sender<()>) {
    let c = config(&[], None);
    let options = ServerOptions {
        max_connections: 1,
        ..ServerOptions::from_config(&c)
    };
    let state = Arc::new(ServerState::new(c, options).unwrap());
    let listener =
        dockerproxy_server::listener::bind("127.0.0.1:0".parse().unwrap(), backlog).unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(dockerproxy_server::run(vec![listener], state, async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

/// Opens `n` connections at once; returns those whose handshake completed within 700 ms (a
/// dropped SYN is retransmitted only after 1 s).
async fn burst(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_millis(700), TcpStream::connect(addr))
                    .await
                    .ok()
                    .and_then(Result::ok)
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        if let Some(s) = t.await.unwrap() {
            out.push(s);
        }
    }
    out
}

async fn health(mut s: TcpStream) -> String {
    s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut buf))
        .await
        .expect("answered")
        .unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

fn somaxconn() -> String {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_burst_of_700_connections_all_answered() {
    let backlog = dockerproxy_core::config::Limits::default().listen_backlog;
    assert_eq!(backlog, 1024);
    let (addr, stop) = start(backlog).await;
    // The one connection the cap admits, idle: the accept loop now waits for its permit.
    let mut blocker = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let conns = burst(addr, BURST).await;
    assert_eq!(
        conns.len(),
        BURST,
        "the accept queue held only {} of {BURST} connections (somaxconn {})",
        conns.len(),
        somaxconn()
    );

    // Free the slot: every queued connection is accepted and answered, one after the other.
    blocker
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    blocker.read_to_end(&mut buf).await.unwrap();
    let tasks: Vec<_> = conns.into_iter().map(|s| tokio::spawn(health(s))).collect();
    let mut ok = 0;
    for t in tasks {
        let text = t.await.unwrap();
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        ok += 1;
    }
    assert_eq!(ok, BURST);
    let _ = stop.send(());
}

/// The control: with the old backlog of 128 the same burst does not fit, which is what the
/// test above would see without the configurable backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_burst_overflows_a_backlog_of_128() {
    let (addr, stop) = start(128).await;
    let _blocker = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let conns = burst(addr, BURST).await;
    assert!(
        conns.len() < BURST / 2,
        "{} of {BURST} connections fit a backlog of 128",
        conns.len()
    );
    let _ = stop.send(());
}
