//! Client-side timeouts through a real in-process server (SECURITY.md §2.14, COMPAT.md §7.4).

mod common;

use std::time::{Duration, Instant};

use common::{Server, config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until EOF or error; returns when the server closed the connection.
async fn wait_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn header_read_timeout_really_fires() {
    let mut cfg = config(&[], None);
    cfg.limits.client_header_timeout = Duration::from_millis(300);
    let server = Server::start(cfg).await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    // Half a request line, then silence (slowloris).
    s.write_all(b"GET /hea").await.unwrap();
    let t0 = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(5), wait_closed(&mut s))
        .await
        .expect("server closed the connection");
    let elapsed = t0.elapsed();
    assert!(
        elapsed >= Duration::from_millis(250),
        "closed too early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_millis(1500),
        "closed too late: {elapsed:?}"
    );
    // Whatever hyper answers (a 408 or nothing), it is never a 200.
    assert!(!String::from_utf8_lossy(&got).contains(" 200 "), "{got:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_silent_connection_is_closed_too() {
    let mut cfg = config(&[], None);
    cfg.limits.client_header_timeout = Duration::from_millis(300);
    let server = Server::start(cfg).await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let t0 = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), wait_closed(&mut s))
        .await
        .expect("server closed the idle connection");
    assert!(t0.elapsed() < Duration::from_millis(1500));
    server.stop().await;
}

#[tokio::test]
async fn a_complete_request_within_the_timeout_is_served() {
    let mut cfg = config(&[], None);
    cfg.limits.client_header_timeout = Duration::from_millis(500);
    let server = Server::start(cfg).await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"GET /hea").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(b"lth HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), wait_closed(&mut s))
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200 "),
        "{}",
        String::from_utf8_lossy(&got)
    );
    server.stop().await;
}

#[tokio::test]
async fn shutdown_drains_then_returns() {
    let mut cfg = config(&[], None);
    cfg.limits.client_header_timeout = Duration::from_secs(30);
    let mut server = Server::start(cfg).await;
    // An idle keep-alive connection must not hold the drain for long.
    let _idle = TcpStream::connect(server.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t0 = Instant::now();
    server.signal_stop();
    tokio::time::timeout(Duration::from_secs(20), &mut server.task)
        .await
        .expect("run returned")
        .unwrap()
        .unwrap();
    assert!(t0.elapsed() < Duration::from_secs(16), "{:?}", t0.elapsed());
}
