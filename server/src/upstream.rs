//! The upstream HTTP client: hyper-util's pooled legacy client over hyper-rustls (HTTP/1.1 and
//! h2 through ALPN), with the timeouts of SECURITY.md §2.5.
//!
//! - connect (DNS, TCP and TLS together): `limits.connect_timeout`, 5 s by default;
//! - response head: `limits.header_timeout`, 30 s, around the whole request future;
//! - body reads: `limits.idle_timeout` per read, applied by the readers in `body.rs` and
//!   `driver.rs`. There is no whole-transfer deadline.
//!
//! The client never follows redirects and never decompresses: the core decides both.
//!
//! Dialling goes through [`GuardedConnector`], which applies the outbound address policy to the
//! addresses actually dialled (SECURITY.md §2.9); a refusal surfaces as [`UpstreamError::Denied`].
//!
//! Upstream concurrency is capped (`limits.max_upstream_fetches`, SECURITY.md §2.14): the driver
//! takes a [`FetchPermit`] with [`UpstreamClient::acquire_fetch`] before each request and keeps it
//! until that response's body is finished — in the driver, in a relayed body ([`PermitBody`]),
//! or in the client clone a detached cache fill owns ([`UpstreamClient::holding`]), whose resumes
//! reuse it. A request that gets no slot within `limits.upstream_fetch_wait` is refused with
//! `503` by the driver. Cache hits and requests joining a fill never ask for a slot.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use dockerproxy_core::config::Limits;
use dockerproxy_core::exchange::{UpstreamBody, UpstreamError, UpstreamRequest};
use http::Uri;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_service::Service;

use crate::connect::{AddressDenied, GuardedConnector};

/// A boxed, thread-safe error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of upstream requests.
pub type RequestBody = BoxBody<Bytes, BoxError>;

/// The pooled upstream client. Cheap to clone; every clone shares the pool and the fetch cap.
#[derive(Clone)]
pub struct UpstreamClient {
    client: Client<TimeoutConnector, RequestBody>,
    header_timeout: Duration,
    idle_timeout: Duration,
    cap: FetchCap,
    /// The fetch slot this clone carries (a fill's client), released with the last clone.
    held: Option<Arc<FetchPermit>>,
}

impl core::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("header_timeout", &self.header_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("cap", &self.cap)
            .field("holds_fetch_slot", &self.held.is_some())
            .finish_non_exhaustive()
    }
}

/// The process-wide cap on upstream fetches in flight.
#[derive(Clone, Debug)]
struct FetchCap {
    slots: Arc<Semaphore>,
    max: usize,
    wait: Duration,
}

/// One upstream fetch slot; dropping it frees the slot.
#[derive(Debug)]
pub struct FetchPermit {
    _permit: OwnedSemaphorePermit,
}

/// No fetch slot freed within `limits.upstream_fetch_wait`: answer `503` with `Retry-After`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchCapFull;

impl core::fmt::Display for FetchCapFull {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("too many upstream fetches in flight")
    }
}

impl std::error::Error for FetchCapFull {}

impl UpstreamClient {
    /// Builds the client from a rustls configuration (roots already loaded), the limits and the
    /// dialler.
    pub fn new(tls: rustls::ClientConfig, limits: &Limits, dialler: GuardedConnector) -> Self {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(dialler);
        let connector = TimeoutConnector {
            inner: https,
            timeout: limits.connect_timeout,
        };
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(32)
            .http1_max_headers(200)
            .http2_max_header_list_size(256 * 1024)
            // A request that never left a dead pooled connection is retried once (COMPAT §7.4).
            .retry_canceled_requests(true)
            .set_host(true)
            .build(connector);
        let max = limits.max_upstream_fetches.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            client,
            header_timeout: limits.header_timeout,
            idle_timeout: limits.idle_timeout,
            cap: FetchCap {
                slots: Arc::new(Semaphore::new(max)),
                max,
                wait: limits.upstream_fetch_wait,
            },
            held: None,
        }
    }

    /// The per-read idle timeout for upstream bodies.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// Takes an upstream fetch slot, waiting up to `limits.upstream_fetch_wait` for one.
    pub async fn acquire_fetch(&self) -> Result<FetchPermit, FetchCapFull> {
        let slots = self.cap.slots.clone();
        if let Ok(permit) = slots.clone().try_acquire_owned() {
            return Ok(FetchPermit { _permit: permit });
        }
        if self.cap.wait.is_zero() {
            return Err(FetchCapFull);
        }
        match tokio::time::timeout(self.cap.wait, slots.acquire_owned()).await {
            Ok(Ok(permit)) => Ok(FetchPermit { _permit: permit }),
            // Timed out, or the semaphore was closed (never done).
            _ => Err(FetchCapFull),
        }
    }

    /// A clone that carries `permit` until its last clone is dropped: for a detached fill, so
    /// the slot stays taken while the fill reads (and resumes) its upstream body.
    pub fn holding(&self, permit: FetchPermit) -> Self {
        Self {
            held: Some(Arc::new(permit)),
            ..self.clone()
        }
    }

    /// The fetch slot this clone carries, if any (see [`Self::holding`]).
    pub fn held_slot(&self) -> Option<Arc<FetchPermit>> {
        self.held.clone()
    }

    /// Upstream fetches in flight now (slots taken).
    pub fn fetches_in_flight(&self) -> usize {
        self.cap
            .max
            .saturating_sub(self.cap.slots.available_permits())
    }

    /// Sends `req` and waits for the response head. `client_body` is used for
    /// [`UpstreamBody::Client`]; it is consumed at most once.
    pub async fn send(
        &self,
        req: UpstreamRequest,
        client_body: &mut Option<Incoming>,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let uri: Uri = req
            .url
            .as_str()
            .parse()
            .map_err(|_| UpstreamError::Unreachable)?;
        // GET/HEAD without a body are retried once when a (pooled) connection dies before the
        // response head: never after response bytes, never for writes (SECURITY.md §2.5).
        let retryable = matches!(req.method, http::Method::GET | http::Method::HEAD)
            && req.body == UpstreamBody::Empty;
        let retry_parts = retryable.then(|| (req.method.clone(), uri.clone(), req.headers.clone()));
        let body: RequestBody = match req.body {
            UpstreamBody::Empty => Empty::new().map_err(|never| match never {}).boxed(),
            UpstreamBody::Bytes(b) => Full::new(b).map_err(|never| match never {}).boxed(),
            UpstreamBody::Client => match client_body.take() {
                Some(incoming) => incoming.map_err(|e| -> BoxError { Box::new(e) }).boxed(),
                None => Empty::new().map_err(|never| match never {}).boxed(),
            },
        };
        let mut headers = req.headers;
        headers.remove(http::header::HOST);
        let mut request = http::Request::new(body);
        *request.method_mut() = req.method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        match tokio::time::timeout(self.header_timeout, self.client.request(request)).await {
            Err(_) => Err(UpstreamError::Timeout),
            Ok(Err(e)) => {
                let kind = classify_error(&e);
                match retry_parts {
                    Some((method, uri, mut headers))
                        if !e.is_connect() && kind == UpstreamError::Unreachable =>
                    {
                        tracing::debug!(error = %e, "upstream connection died before the response; retrying once");
                        headers.remove(http::header::HOST);
                        let mut again = http::Request::new(
                            Empty::new().map_err(|never| match never {}).boxed(),
                        );
                        *again.method_mut() = method;
                        *again.uri_mut() = uri;
                        *again.headers_mut() = headers;
                        match tokio::time::timeout(self.header_timeout, self.client.request(again))
                            .await
                        {
                            Err(_) => Err(UpstreamError::Timeout),
                            Ok(Err(e)) => Err(classify_error(&e)),
                            Ok(Ok(resp)) => Ok(resp),
                        }
                    }
                    _ => Err(kind),
                }
            }
            Ok(Ok(resp)) => Ok(resp),
        }
    }
}

/// A body that keeps an upstream fetch slot until it is dropped (a relayed upstream body).
#[derive(Debug)]
pub struct PermitBody<B> {
    inner: B,
    _slot: Arc<FetchPermit>,
}

impl<B> PermitBody<B> {
    /// Wraps `inner`, holding `slot` as long as the body lives.
    pub fn new(inner: B, slot: Arc<FetchPermit>) -> Self {
        Self { inner, _slot: slot }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for PermitBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Reads a whole (small) upstream body: at most `limit` bytes, refused early on a larger
/// `Content-Length`, stopped at `limit + 1` when chunked, `idle` per read.
pub async fn read_to_limit(
    mut body: Incoming,
    limit: usize,
    idle: Duration,
    content_length: Option<u64>,
) -> Result<Bytes, UpstreamError> {
    if content_length.is_some_and(|n| n > limit as u64) {
        return Err(UpstreamError::TooLarge);
    }
    let mut buf = bytes::BytesMut::new();
    loop {
        match tokio::time::timeout(idle, body.frame()).await {
            Err(_) | Ok(Some(Err(_))) => return Err(UpstreamError::BodyFailed),
            Ok(None) => return Ok(buf.freeze()),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if data.len() > limit.saturating_sub(buf.len()) {
                        return Err(UpstreamError::TooLarge);
                    }
                    buf.extend_from_slice(&data);
                }
            }
        }
    }
}

/// Maps a client error onto the core's vocabulary: our connect timeout → `Timeout`, anything
/// else before a head → `Unreachable`.
fn classify_error(e: &hyper_util::client::legacy::Error) -> UpstreamError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<AddressDenied>() {
            return UpstreamError::Denied;
        }
        if s.is::<ConnectTimeout>() {
            return UpstreamError::Timeout;
        }
        if s.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return UpstreamError::Timeout;
        }
        source = s.source();
    }
    UpstreamError::Unreachable
}

/// The connect phase (DNS, TCP, TLS) took longer than the connect timeout.
#[derive(Debug)]
struct ConnectTimeout;

impl core::fmt::Display for ConnectTimeout {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("upstream connect timed out")
    }
}

impl std::error::Error for ConnectTimeout {}

/// Wraps the HTTPS connector so DNS + TCP + TLS share one deadline.
#[derive(Clone)]
struct TimeoutConnector {
    inner: HttpsConnector<GuardedConnector>,
    timeout: Duration,
}

type ConnectFuture =
    Pin<Box<dyn Future<Output = Result<MaybeHttpsStream<TokioIo<TcpStream>>, BoxError>> + Send>>;

impl Service<Uri> for TimeoutConnector {
    type Response = MaybeHttpsStream<TokioIo<TcpStream>>;
    type Error = BoxError;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let fut = self.inner.call(uri);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, fut).await {
                Ok(result) => result,
                Err(_) => Err(Box::new(ConnectTimeout) as BoxError),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dockerproxy_core::exchange::Purpose;

    fn request(url: &str) -> UpstreamRequest {
        UpstreamRequest {
            method: http::Method::GET,
            url: url::Url::parse(url).unwrap(),
            headers: http::HeaderMap::new(),
            body: UpstreamBody::Empty,
            purpose: Purpose::Resource,
            registry: "test".into(),
            follow_redirects: false,
        }
    }

    fn client(limits: &Limits, port: u16) -> UpstreamClient {
        let dialler = GuardedConnector::with_exceptions(
            vec![("127.0.0.1".into(), port)],
            limits.connect_timeout,
        );
        UpstreamClient::new(crate::tls::client_config(None).unwrap(), limits, dialler)
    }

    #[tokio::test]
    async fn refused_connection_is_unreachable() {
        // Bind then drop a listener so the port is (almost certainly) closed.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let c = client(&Limits::default(), port);
        let err = c
            .send(request(&format!("http://127.0.0.1:{port}/v2/")), &mut None)
            .await
            .unwrap_err();
        assert_eq!(err, UpstreamError::Unreachable);
    }

    #[tokio::test]
    async fn loopback_without_exception_is_denied() {
        let c = client(&Limits::default(), 1);
        let err = c
            .send(request("http://127.0.0.1:2/v2/"), &mut None)
            .await
            .unwrap_err();
        assert_eq!(err, UpstreamError::Denied);
    }

    #[tokio::test]
    async fn silent_upstream_hits_the_header_timeout() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let hold = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(s);
        });
        let limits = Limits {
            header_timeout: Duration::from_millis(200),
            ..Limits::default()
        };
        let c = client(&limits, port);
        let t0 = std::time::Instant::now();
        let err = c
            .send(request(&format!("http://127.0.0.1:{port}/v2/")), &mut None)
            .await
            .unwrap_err();
        assert_eq!(err, UpstreamError::Timeout);
        assert!(t0.elapsed() < Duration::from_secs(2));
        hold.abort();
    }
}
