//! The TCP dialler under the upstream client, with the outbound address policy (SECURITY.md
//! §2.9) applied to the addresses actually dialled, after DNS.
//!
//! The connector resolves the name itself and connects only to addresses that
//! [`is_denied_address`] lets through, or that match a configured exact `host:port` exception.
//! Because the checked address is the dialled address, DNS rebinding between a check and a dial
//! cannot happen. TLS is layered on top by hyper-rustls; the whole connect phase is bounded by
//! the caller's connect timeout.
//!
//! Exceptions are per registry in the configuration; the connection pool is keyed by origin,
//! not registry, so here an exception applies to its exact `host:port` whichever registry dials
//! it (it is still one exact pair, never a range).
//!
//! TODO(dns): `DNS_ENABLED` / `DNS_SERVERS` need a DNS client; until one is added the system
//! resolver is used and startup warns.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use dockerproxy_core::Config;
use dockerproxy_core::redirect::is_denied_address;
use http::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

use crate::upstream::BoxError;

/// Every resolved address of the upstream is refused by the address policy.
#[derive(Debug)]
pub struct AddressDenied;

impl core::fmt::Display for AddressDenied {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("upstream address refused by the outbound address policy")
    }
}

impl std::error::Error for AddressDenied {}

/// A dialler that applies the address policy.
#[derive(Clone, Debug)]
pub struct GuardedConnector {
    /// Exact `(host, port)` exceptions, host lower-case, IPv6 without brackets.
    exceptions: Arc<Vec<(String, u16)>>,
    /// Per-address connect attempt limit when several addresses are tried.
    attempt_timeout: Duration,
}

fn bare_host(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

impl GuardedConnector {
    /// A connector with the exceptions of `config`.
    pub fn new(config: &Config) -> Self {
        let exceptions = config
            .address_exceptions
            .iter()
            .map(|e| (bare_host(&e.host).to_ascii_lowercase(), e.port))
            .collect();
        Self {
            exceptions: Arc::new(exceptions),
            attempt_timeout: config.limits.connect_timeout / 2,
        }
    }

    /// A connector with explicit `(host, port)` exceptions.
    pub fn with_exceptions(exceptions: Vec<(String, u16)>, connect_timeout: Duration) -> Self {
        let exceptions = exceptions
            .into_iter()
            .map(|(h, p)| (bare_host(&h).to_ascii_lowercase(), p))
            .collect();
        Self {
            exceptions: Arc::new(exceptions),
            attempt_timeout: connect_timeout / 2,
        }
    }

    /// True when `host:port` is a configured exception.
    fn excepted(&self, host: &str, port: u16) -> bool {
        let host = bare_host(host).trim_end_matches('.');
        self.exceptions
            .iter()
            .any(|(h, p)| *p == port && h.eq_ignore_ascii_case(host))
    }

    /// The addresses of `host:port` that may be dialled, in resolver order.
    pub async fn allowed_addresses(
        &self,
        host: &str,
        port: u16,
    ) -> Result<Vec<SocketAddr>, BoxError> {
        let bare = bare_host(host);
        let resolved: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((bare, port)).await?.collect(),
        };
        if resolved.is_empty() {
            return Err(Box::new(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no address",
            )));
        }
        let excepted = self.excepted(host, port);
        let allowed: Vec<SocketAddr> = resolved
            .into_iter()
            .filter(|a| excepted || !is_denied_address(a.ip().to_canonical()))
            .collect();
        if allowed.is_empty() {
            tracing::warn!(host = %crate::logging::sanitize(host, 256), port, "upstream address denied by policy");
            return Err(Box::new(AddressDenied));
        }
        Ok(allowed)
    }
}

type DialFuture = Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, BoxError>> + Send>>;

impl Service<Uri> for GuardedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = DialFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = uri.host().ok_or("upstream URL without host")?.to_owned();
            let default_port = if uri.scheme_str() == Some("https") {
                443
            } else {
                80
            };
            let port = uri.port_u16().unwrap_or(default_port);
            let addrs = this.allowed_addresses(&host, port).await?;
            let several = addrs.len() > 1;
            let mut last: Option<std::io::Error> = None;
            for addr in addrs {
                let attempt = TcpStream::connect(addr);
                let result = if several {
                    match tokio::time::timeout(this.attempt_timeout, attempt).await {
                        Ok(r) => r,
                        Err(_) => Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "connect attempt timed out",
                        )),
                    }
                } else {
                    attempt.await
                };
                match result {
                    Ok(stream) => {
                        let _ = stream.set_nodelay(true);
                        return Ok(TokioIo::new(stream));
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(last.map_or_else(|| BoxError::from("no address"), |e| Box::new(e) as BoxError))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connector(exceptions: &[(&str, u16)]) -> GuardedConnector {
        let list = exceptions
            .iter()
            .map(|(h, p)| ((*h).to_owned(), *p))
            .collect();
        GuardedConnector::with_exceptions(list, Duration::from_secs(2))
    }

    #[tokio::test]
    async fn loopback_is_denied_without_an_exception() {
        let c = connector(&[]);
        let e = c.allowed_addresses("127.0.0.1", 5000).await.unwrap_err();
        assert!(e.is::<AddressDenied>());
        let e = c.allowed_addresses("[::1]", 5000).await.unwrap_err();
        assert!(e.is::<AddressDenied>());
        let e = c
            .allowed_addresses("[::ffff:169.254.169.254]", 80)
            .await
            .unwrap_err();
        assert!(e.is::<AddressDenied>());
        // Names are checked after resolution.
        let e = c.allowed_addresses("localhost", 5000).await.unwrap_err();
        assert!(e.is::<AddressDenied>());
    }

    #[tokio::test]
    async fn exact_exception_allows_only_its_port() {
        let c = connector(&[("127.0.0.1", 5000), ("::1", 5001)]);
        assert_eq!(
            c.allowed_addresses("127.0.0.1", 5000).await.unwrap(),
            vec!["127.0.0.1:5000".parse().unwrap()]
        );
        assert!(
            c.allowed_addresses("127.0.0.1", 5002)
                .await
                .unwrap_err()
                .is::<AddressDenied>()
        );
        assert_eq!(
            c.allowed_addresses("[::1]", 5001).await.unwrap(),
            vec!["[::1]:5001".parse().unwrap()]
        );
    }

    #[tokio::test]
    async fn public_literal_is_allowed() {
        let c = connector(&[]);
        assert_eq!(
            c.allowed_addresses("8.8.8.8", 443).await.unwrap(),
            vec!["8.8.8.8:443".parse().unwrap()]
        );
    }
}
