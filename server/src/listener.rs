//! Accepting and serving client connections (SECURITY.md §2.14).
//!
//! - sockets bound with a configurable listen backlog (`limits.listen_backlog`, 1024 by default;
//!   tokio's and std's `bind` use 128, which overflowed under a burst of 700 connects);
//! - a connection cap: a permit from a semaphore is taken before `accept`, so at the cap the
//!   kernel backlog, not memory, absorbs the excess;
//! - one tokio task per connection, each wrapped in a write-stall guard ([`WriteStall`]);
//! - HTTP/1.1 through hyper's explicit `http1` builder with a timer, so the header-read timeout
//!   really fires (it also bounds keep-alive idle time: hyper restarts it while waiting for the
//!   next request head); ≤ 100 headers and 64 KiB of head bytes;
//! - TLS through tokio-rustls when configured, the handshake bounded by the same timeout; HTTP/2
//!   only when negotiated by ALPN, so no version sniff without a timeout is ever needed; h2 with
//!   ≤ 100 concurrent streams, a 64 KiB header list, rapid-reset and local-reset limits and a
//!   keep-alive ping (h2 ≥ 0.4.4 also bounds CONTINUATION floods);
//! - graceful shutdown: stop accepting, let every connection finish its in-flight request
//!   within the drain timeout, then abort the rest.

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::rt::{Read, Write};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use crate::driver;
use crate::stall::WriteStall;
use crate::state::ServerState;

/// Largest request head, in bytes.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Largest number of request header lines.
const MAX_HEADERS: usize = 100;

/// Binds a listening socket on `addr` with `SO_REUSEADDR` (as tokio's `bind`) and `backlog`
/// pending connections (the kernel caps it at `net.core.somaxconn`). An IPv6 wildcard address
/// stays dual-stack where the system allows it. Must run inside the tokio runtime.
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog.max(1))
}

/// Resolves once `shutdown` turns true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|&stop| stop).await;
}

/// Accepts on `listener` until `shutdown` turns true, then drains its connections. With `tls`
/// (and a configured certificate) connections start with a TLS handshake.
pub async fn serve(
    listener: TcpListener,
    tls: bool,
    state: Arc<ServerState>,
    mut shutdown: watch::Receiver<bool>,
    cap: Arc<Semaphore>,
) {
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let permit = tokio::select! {
            _ = stopped(&mut shutdown) => break,
            p = cap.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = stopped(&mut shutdown) => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                conns.spawn(connection(
                    stream,
                    peer,
                    tls,
                    state.clone(),
                    shutdown.clone(),
                    permit,
                ));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                drop(permit);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(state.options.drain_timeout, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            remaining = conns.len(),
            "drain timeout: aborting connections"
        );
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
}

/// Serves one accepted connection.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: bool,
    state: Arc<ServerState>,
    shutdown: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let peer_ip = Some(peer.ip().to_canonical());
    let io = WriteStall::new(stream, state.options.write_stall_timeout);
    let Some(acceptor) = state.tls_acceptor.clone().filter(|_| tls) else {
        http1(TokioIo::new(io), peer_ip, false, state, shutdown).await;
        return;
    };
    let handshake = tokio::time::timeout(
        state.config.limits.client_header_timeout,
        acceptor.accept(io),
    )
    .await;
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            return;
        }
    };
    let h2 = state.options.http2 && tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
    if h2 {
        http2(TokioIo::new(tls), peer_ip, state, shutdown).await;
    } else {
        http1(TokioIo::new(tls), peer_ip, true, state, shutdown).await;
    }
}

async fn http1<I>(
    io: I,
    peer: Option<IpAddr>,
    tls: bool,
    state: Arc<ServerState>,
    mut shutdown: watch::Receiver<bool>,
) where
    I: Read + Write + Unpin + Send + 'static,
{
    let svc_state = state.clone();
    let svc = service_fn(move |req| {
        let state = svc_state.clone();
        async move { Ok::<_, Infallible>(driver::handle(state, req, peer, tls).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(state.config.limits.client_header_timeout)
        .keep_alive(true)
        .max_headers(MAX_HEADERS)
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_HEAD_BYTES);
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        _ = stopped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

async fn http2<I>(
    io: I,
    peer: Option<IpAddr>,
    state: Arc<ServerState>,
    mut shutdown: watch::Receiver<bool>,
) where
    I: Read + Write + Unpin + Send + 'static,
{
    let svc_state = state.clone();
    let svc = service_fn(move |req| {
        let state = svc_state.clone();
        async move { Ok::<_, Infallible>(driver::handle(state, req, peer, true).await) }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(100)
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        // Rapid reset (CVE-2023-44487): streams the client resets before they are accepted.
        .max_pending_accept_reset_streams(20)
        // Streams the server resets for client protocol errors ("MadeYouReset").
        .max_local_error_reset_streams(256)
        .keep_alive_interval(Duration::from_secs(60))
        .keep_alive_timeout(Duration::from_secs(20));
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "h2 connection ended with an error");
            }
        }
        _ = stopped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
