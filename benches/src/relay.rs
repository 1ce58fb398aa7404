//! A slow WAN link on loopback (TESTBED §6.6): a user-space TCP relay with one global token
//! bucket shared by every connection, applied to the upstream→client direction, and a fixed delay
//! before each new upstream connection. Unlike `tc netem` on `lo` it slows only its own traffic.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Largest chunk moved per bucket take (keeps the shared rate smooth between connections).
const CHUNK: usize = 16 * 1024;

/// Link parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkSpec {
    /// Bytes per second, upstream→client, summed over all connections.
    pub rate: f64,
    /// Bucket capacity in seconds of `rate` (burst cap).
    pub burst_seconds: f64,
    /// Delay before connecting each new connection upstream.
    pub connect_delay: Duration,
}

impl Default for LinkSpec {
    /// 100 MB/s, 50 ms burst, +20 ms per connection.
    fn default() -> Self {
        Self {
            rate: 100e6,
            burst_seconds: 0.05,
            connect_delay: Duration::from_millis(20),
        }
    }
}

/// One token bucket shared by all connections. Takers may drive it into debt and then sleep
/// until the debt is repaid, so the sum over connections never exceeds the rate.
#[derive(Debug)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    /// A full bucket.
    pub fn new(rate: f64, burst_seconds: f64) -> Self {
        let burst = rate * burst_seconds;
        Self {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// How long the caller must wait before sending `n` more bytes (the tokens are taken now).
    pub fn take(&self, n: usize) -> Duration {
        let Ok(mut state) = self.state.lock() else {
            return Duration::ZERO;
        };
        let now = Instant::now();
        let elapsed = now.duration_since(state.1).as_secs_f64();
        state.0 = (state.0 + elapsed * self.rate).min(self.burst);
        state.1 = now;
        state.0 -= n as f64;
        if state.0 >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-state.0 / self.rate)
        }
    }
}

/// A running relay; dropping it stops accepting (open connections finish on their own).
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Relay {
    /// Listens on `127.0.0.1:0` and relays every connection to `upstream` through the link.
    pub async fn start(upstream: SocketAddr, spec: LinkSpec) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let bucket = Arc::new(Bucket::new(spec.rate, spec.burst_seconds));
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let bucket = Arc::clone(&bucket);
                tokio::spawn(async move {
                    let _ = relay_one(client, upstream, spec.connect_delay, &bucket).await;
                });
            }
        });
        Ok(Self { addr, task })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay_one(
    client: TcpStream,
    upstream: SocketAddr,
    delay: Duration,
    bucket: &Bucket,
) -> std::io::Result<()> {
    tokio::time::sleep(delay).await;
    let server = TcpStream::connect(upstream).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = async {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        let _ = server_write.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let wait = bucket.take(n);
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            if client_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = client_write.shutdown().await;
    };
    tokio::join!(up, down);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_limits_the_sum_of_takes() {
        let bucket = Bucket::new(1e6, 0.05);
        // The burst (50 kB) is free, the next 1 MB costs one second.
        assert_eq!(bucket.take(50_000), Duration::ZERO);
        let wait = bucket.take(1_000_000);
        assert!(wait > Duration::from_millis(990), "{wait:?}");
        assert!(wait < Duration::from_millis(1010), "{wait:?}");
    }

    #[tokio::test]
    async fn relay_rate_is_close_to_the_spec() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let up_addr = upstream.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut s, _) = upstream.accept().await.expect("accept");
            let data = vec![7u8; 2_000_000];
            s.write_all(&data).await.expect("write");
        });
        let spec = LinkSpec {
            rate: 10e6,
            burst_seconds: 0.01,
            connect_delay: Duration::from_millis(20),
        };
        let relay = Relay::start(up_addr, spec).await.expect("relay");
        let start = Instant::now();
        let mut c = TcpStream::connect(relay.addr()).await.expect("connect");
        let mut got = Vec::new();
        c.read_to_end(&mut got).await.expect("read");
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(got.len(), 2_000_000);
        // 2 MB at 10 MB/s = 0.2 s, plus 20 ms connect delay.
        assert!((0.2..0.35).contains(&secs), "{secs}");
    }
}
