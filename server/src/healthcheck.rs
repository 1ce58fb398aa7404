//! The container health check (`dockerproxy healthcheck`, `-health-check`, `--health-check`):
//! `GET http://127.0.0.1:$PORT/health` with a deadline, healthy on a 200 (COMPAT.md §2).
//!
//! A plain HTTP/1.1 exchange over a TCP socket: the check must work in a minimal image with no
//! TLS, DNS or configuration file.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// True when `GET /health` on `127.0.0.1:port` answers 200 within `timeout`.
pub async fn check(port: u16, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, probe(port))
        .await
        .unwrap_or(false)
}

async fn probe(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let request = format!(
        "GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nUser-Agent: dockerproxy-healthcheck\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    // The status line is all we need: "HTTP/1.1 200 ...".
    let mut buf = [0u8; 16];
    let mut got = 0;
    while got < 12 {
        match stream.read(&mut buf[got..]).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => got += n,
        }
    }
    buf.starts_with(b"HTTP/1.1 200") || buf.starts_with(b"HTTP/1.0 200")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn one_shot(response: &'static [u8]) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(response).await;
        });
        port
    }

    #[tokio::test]
    async fn ok_and_not_ok() {
        let port = one_shot(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
        assert!(check(port, Duration::from_secs(3)).await);
        let port = one_shot(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n").await;
        assert!(!check(port, Duration::from_secs(3)).await);
    }

    #[tokio::test]
    async fn silent_server_times_out() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let t0 = std::time::Instant::now();
        assert!(!check(port, Duration::from_millis(200)).await);
        assert!(t0.elapsed() < Duration::from_secs(2));
        drop(l);
    }
}
