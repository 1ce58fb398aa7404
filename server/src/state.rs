//! Process-wide server state shared by every connection: the configuration, the upstream client,
//! the cache store seam, metrics, readiness and the options that are not (yet) part of
//! [`Config`].
//!
//! It holds no per-request data; per-request state lives in the core's `Exchange`.

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dockerproxy_core::{Config, Timestamp};

use crate::cache::{DiskStore, Settings as CacheStoreSettings};
use crate::connect::GuardedConnector;
use crate::metrics::Metrics;
use crate::store::{NoopStore, Store};
use crate::tls::{self, TlsError};
use crate::tokens::Tokens;
use crate::upstream::UpstreamClient;

/// Server settings: the listener-side values of [`Config`] as paths and flags, plus the limits
/// the configuration does not expose (drain timeout, connection cap, write-stall timeout).
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// PEM certificate chain and private key for a TLS listener; plain HTTP when `None`.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Offer HTTP/2 (through ALPN on a TLS listener; plain listeners stay HTTP/1.1 so no
    /// version sniff without a timeout is ever needed, SECURITY.md §2.14).
    pub http2: bool,
    /// Extra PEM CA bundle trusted for upstream TLS, in addition to the webpki roots.
    pub ca_bundle: Option<PathBuf>,
    /// Log as JSON lines.
    pub json_logs: bool,
    /// How long in-flight requests may finish after a shutdown signal (COMPAT.md §7.4).
    pub drain_timeout: Duration,
    /// Connection cap at accept (SECURITY.md §2.14).
    pub max_connections: usize,
    /// A client that reads nothing for this long is disconnected (COMPAT.md §7.4).
    pub write_stall_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            tls: None,
            http2: false,
            ca_bundle: None,
            json_logs: false,
            drain_timeout: Duration::from_secs(15),
            max_connections: 4096,
            write_stall_timeout: Duration::from_secs(60),
        }
    }
}

impl ServerOptions {
    /// The options implied by `config` (defaults for what it does not carry).
    pub fn from_config(config: &Config) -> Self {
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
            _ => None,
        };
        Self {
            tls,
            http2: config.http2,
            ca_bundle: config.ca_bundle.as_ref().map(PathBuf::from),
            json_logs: config.json_logs,
            ..Self::default()
        }
    }
}

/// Why the server state could not be built.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// A TLS certificate, key or CA bundle could not be used.
    Tls(TlsError),
    /// The system has no randomness for the secret key.
    Random,
}

impl core::fmt::Display for StartError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Tls(e) => write!(f, "{e}"),
            Self::Random => f.write_str("no system randomness for the secret key"),
        }
    }
}

impl std::error::Error for StartError {}

impl From<TlsError> for StartError {
    fn from(e: TlsError) -> Self {
        Self::Tls(e)
    }
}

/// Everything the connections share.
pub struct ServerState {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Options not carried by `config`.
    pub options: ServerOptions,
    /// The upstream HTTP client (pooled).
    pub client: UpstreamClient,
    /// The cache store: the disk store, or a no-op when the cache is off or unusable.
    pub store: Arc<dyn Store>,
    /// Why the cache is disabled although `CACHE_ENABLED` is on (`/readyz` reports it).
    pub cache_disabled: Option<String>,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// The shared upstream token cache.
    pub tokens: Arc<Tokens>,
    /// Server-side TLS, when configured.
    pub tls_acceptor: Option<tokio_rustls::TlsAcceptor>,
    /// Proxy-login password checks (memo and failure tracking).
    pub login: crate::login::LoginGuard,
    started: Instant,
    draining: AtomicBool,
    client_key: RandomState,
}

impl core::fmt::Debug for ServerState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ServerState")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl ServerState {
    /// Builds the state from a configuration and explicit options.
    pub fn new(mut config: Config, options: ServerOptions) -> Result<Self, StartError> {
        let client_tls = tls::client_config(options.ca_bundle.as_deref())?;
        let tls_acceptor = match &options.tls {
            Some((cert, key)) => Some(tls::acceptor(cert, key, options.http2)?),
            None => None,
        };
        if config.dns_enabled {
            tracing::warn!("DNS_ENABLED is not supported yet: the system resolver is used");
        }
        let store_tls = client_tls.clone();
        let client =
            UpstreamClient::new(client_tls, &config.limits, GuardedConnector::new(&config));
        if config.secret_key == [0; 32] {
            // Keys the proxy's own tokens and the hashes of client credentials (never stored).
            ring::rand::SecureRandom::fill(
                &ring::rand::SystemRandom::new(),
                &mut config.secret_key,
            )
            .map_err(|_| StartError::Random)?;
        }
        let (store, cache_disabled) = open_store(&config, store_tls);
        if cache_disabled.is_some() {
            // Serving without a cache: the core must not promise one (`X-Cache: BYPASS`, no
            // lookups or stores).
            config.cache.enabled = false;
        }
        let login = crate::login::LoginGuard::new(config.secret_key);
        Ok(Self {
            config: Arc::new(config),
            options,
            client,
            store,
            cache_disabled,
            metrics: Metrics::default(),
            tokens: Arc::new(Tokens::default()),
            tls_acceptor,
            login,
            started: Instant::now(),
            draining: AtomicBool::new(false),
            client_key: RandomState::new(),
        })
    }

    /// Replaces the cache store.
    pub fn with_store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = store;
        self.cache_disabled = None;
        self
    }

    /// Time since the state was built.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// True once shutdown began (`/readyz` answers 503).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Marks the start of shutdown.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// A short keyed hash of a client address for logs (SECURITY.md §2.17): stable within the
    /// process, meaningless outside it.
    pub fn client_tag(&self, peer: Option<IpAddr>) -> String {
        match peer {
            Some(ip) => format!("{:08x}", self.client_key.hash_one(ip) >> 32),
            None => "-".to_owned(),
        }
    }
}

/// The disk store when `CACHE_ENABLED`; an unusable `CACHE_DIR` (not creatable, read-only,
/// locked by another process) means serving without a cache, with the reason kept for
/// `/readyz` and logged (COMPAT.md §2).
fn open_store(config: &Config, tls: rustls::ClientConfig) -> (Arc<dyn Store>, Option<String>) {
    if !config.cache.enabled {
        return (Arc::new(NoopStore), None);
    }
    // A waiter on another request's fill claim waits at most as long as that request may take
    // to get its upstream answer (connect + token + resource heads).
    let limits = &config.limits;
    let claim_wait = limits
        .header_timeout
        .saturating_mul(2)
        .saturating_add(limits.connect_timeout);
    // With a shared store the local leader may wait for another replica's fill (up to the
    // shared store's own bound): its followers wait as long instead of each going upstream.
    let claim_wait = if config.cache.s3.is_some() {
        claim_wait.max(crate::shared::MAX_WAIT)
    } else {
        claim_wait
    };
    let settings = CacheStoreSettings::from_config(&config.cache, claim_wait);
    match DiskStore::open(&config.cache.dir, settings) {
        Ok(store) => match &config.cache.s3 {
            None => (Arc::new(store), None),
            Some(s3) => crate::shared::open(store, s3, tls),
        },
        Err(reason) => {
            tracing::error!(%reason, "cache disabled: serving from upstream without a cache");
            (Arc::new(NoopStore), Some(reason))
        }
    }
}

/// The current wall-clock time as the core's [`Timestamp`].
pub fn now() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    Timestamp::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}
