//! `dockerproxy-server`: the `dockerproxy` binary's library — hyper 1 + tokio + rustls around the
//! sans-IO core (DESIGN.md §4).
//!
//! The server is the only place that knows sockets, TLS, the clock and (later) the filesystem.
//! Per request it builds a `RequestHead`, drives the core's `Exchange` ([`driver`]) and performs
//! its actions with a pooled upstream client ([`upstream`]).
//!
//! Tests start it in-process, mini-redis style:
//!
//! ```no_run
//! # async fn demo(config: dockerproxy_core::Config) -> Result<(), Box<dyn std::error::Error>> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let state = dockerproxy_server::build_state(config)?;
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = tokio::spawn(dockerproxy_server::run(vec![listener], state, async {
//!     let _ = stopped.await;
//! }));
//! // ... requests ...
//! let _ = stop.send(());
//! server.await??;
//! # Ok(()) }
//! ```

pub mod body;
pub mod cache;
pub mod connect;
pub mod driver;
pub mod healthcheck;
pub mod listener;
pub mod local;
pub mod logging;
pub mod login;
pub mod metrics;
pub mod shared;
pub mod shutdown;
pub mod stall;
pub mod state;
pub mod store;
pub mod tls;
pub mod tokens;
pub mod upstream;

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use dockerproxy_core::Config;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

pub use state::{ServerOptions, ServerState, StartError};

/// Builds the shared state from a validated configuration, with the options it implies.
pub fn build_state(config: Config) -> Result<Arc<ServerState>, StartError> {
    let options = ServerOptions::from_config(&config);
    Ok(Arc::new(ServerState::new(config, options)?))
}

/// A bound listener and whether its connections speak TLS.
#[derive(Debug)]
pub struct Listener {
    /// The socket.
    pub tcp: TcpListener,
    /// Start every connection with a TLS handshake (needs `tls_cert` and `tls_key`).
    pub tls: bool,
}

/// Serves plain HTTP on every listener until `shutdown` resolves; then stops accepting, answers
/// `/readyz` with 503, drains in-flight requests for up to `options.drain_timeout`, aborts the
/// rest and returns.
pub async fn run(
    listeners: Vec<TcpListener>,
    state: Arc<ServerState>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let listeners = listeners
        .into_iter()
        .map(|tcp| Listener { tcp, tls: false })
        .collect();
    run_listeners(listeners, state, shutdown).await
}

/// As [`run`], with a TLS flag per listener.
pub async fn run_listeners(
    listeners: Vec<Listener>,
    state: Arc<ServerState>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    if listeners.iter().any(|l| l.tls) && state.tls_acceptor.is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a TLS listener needs tls_cert and tls_key",
        ));
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let cap = Arc::new(Semaphore::new(state.options.max_connections.max(1)));
    let mut loops = JoinSet::new();
    for Listener { tcp, tls } in listeners {
        if let Ok(addr) = tcp.local_addr() {
            tracing::info!(%addr, tls, "listening");
        }
        loops.spawn(listener::serve(
            tcp,
            tls,
            state.clone(),
            stop_rx.clone(),
            cap.clone(),
        ));
    }
    shutdown.await;
    state.begin_drain();
    let _ = stop_tx.send(true);
    while let Some(r) = loops.join_next().await {
        if let Err(e) = r {
            tracing::error!(error = %e, "accept loop failed");
        }
    }
    tracing::info!("drained; stopped");
    Ok(())
}

/// Binds the plain-HTTP listeners for `port` on every address: `[::]` (dual-stack where the
/// system allows it) and `0.0.0.0`, with the default listen backlog. Fails only when neither
/// can be bound.
pub async fn bind_all(port: u16) -> io::Result<Vec<TcpListener>> {
    bind_all_with_backlog(
        port,
        dockerproxy_core::config::Limits::default().listen_backlog,
    )
    .await
}

/// As [`bind_all`], with `backlog` pending connections per socket (`limits.listen_backlog`).
pub async fn bind_all_with_backlog(port: u16, backlog: u32) -> io::Result<Vec<TcpListener>> {
    let mut listeners = Vec::new();
    let v6 = listener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)), backlog);
    let v6_err = match v6 {
        Ok(l) => {
            listeners.push(l);
            None
        }
        Err(e) => Some(e),
    };
    match listener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)), backlog) {
        Ok(l) => listeners.push(l),
        // A dual-stack `[::]` socket already holds the IPv4 port.
        Err(e) if e.kind() == io::ErrorKind::AddrInUse && !listeners.is_empty() => {}
        Err(e) => {
            if listeners.is_empty() {
                return Err(v6_err.unwrap_or(e));
            }
            tracing::warn!(error = %e, "IPv4 listener unavailable; serving on IPv6 only");
        }
    }
    Ok(listeners)
}
