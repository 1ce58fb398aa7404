//! The client response body: empty, fixed bytes, a store body (a committed file or a fill in
//! flight, see `cache::reader`), or the upstream body streamed frame by frame.
//!
//! Streaming is backpressured: a frame is read from upstream only when hyper asks for the next
//! one, so a slow client slows the upstream read instead of growing a buffer. When a digest is
//! given, every frame goes through the core's [`Verifier`], which holds back the tail until the
//! digest (and length) are confirmed; on a mismatch, an upstream error or an idle timeout the
//! body yields an error, and hyper aborts the connection (HTTP/1 closes early, HTTP/2 resets the
//! stream). A client never sees a clean end after wrong or missing bytes.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use dockerproxy_core::verifier::{Verifier, VerifyError};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::cache::fill::FillError;
use crate::logging::{Outcome, RequestLog};
use crate::store::StoreBody;

/// Why a response body was aborted.
#[derive(Debug)]
#[non_exhaustive]
pub enum BodyError {
    /// No upstream byte arrived within the idle timeout.
    IdleTimeout,
    /// The upstream body failed.
    Upstream(String),
    /// The bytes did not match the expected digest or length.
    Integrity(VerifyError),
    /// The store body failed.
    Store(String),
}

impl core::fmt::Display for BodyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::IdleTimeout => f.write_str("upstream idle timeout"),
            Self::Upstream(e) => write!(f, "upstream body failed: {e}"),
            Self::Integrity(e) => write!(f, "integrity check failed: {e:?}"),
            Self::Store(e) => write!(f, "store body failed: {e}"),
        }
    }
}

impl std::error::Error for BodyError {}

/// An upstream body being relayed.
pub struct UpstreamStream {
    body: Incoming,
    idle: Duration,
    sleep: Pin<Box<Sleep>>,
    waiting: bool,
    verifier: Option<Verifier>,
    tail: Option<Bytes>,
    done: bool,
}

impl UpstreamStream {
    /// Relays `body`, verifying with `verifier` when given.
    pub fn new(body: Incoming, idle: Duration, verifier: Option<Verifier>) -> Self {
        Self {
            body,
            idle,
            sleep: Box::pin(tokio::time::sleep(idle)),
            waiting: false,
            verifier,
            tail: None,
            done: false,
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyError>>> {
        loop {
            if let Some(tail) = self.tail.take() {
                self.done = true;
                if !tail.is_empty() {
                    return Poll::Ready(Some(Ok(tail)));
                }
            }
            if self.done {
                return Poll::Ready(None);
            }
            // The idle clock runs only while we wait for upstream, not while the client is slow.
            if !self.waiting {
                self.sleep.as_mut().reset(Instant::now() + self.idle);
                self.waiting = true;
            }
            let frame = match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Pending => {
                    if self.sleep.as_mut().poll(cx).is_ready() {
                        self.done = true;
                        return Poll::Ready(Some(Err(BodyError::IdleTimeout)));
                    }
                    return Poll::Pending;
                }
                Poll::Ready(frame) => frame,
            };
            self.waiting = false;
            match frame {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    let Some(v) = self.verifier.as_mut() else {
                        return Poll::Ready(Some(Ok(data)));
                    };
                    match v.push(&data) {
                        Ok(out) if out.is_empty() => continue,
                        Ok(out) => return Poll::Ready(Some(Ok(out))),
                        Err(e) => {
                            self.done = true;
                            return Poll::Ready(Some(Err(BodyError::Integrity(e))));
                        }
                    }
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(BodyError::Upstream(e.to_string()))));
                }
                None => match self.verifier.take() {
                    Some(v) => match v.finish() {
                        Ok(tail) => self.tail = Some(tail),
                        Err(e) => {
                            self.done = true;
                            return Poll::Ready(Some(Err(BodyError::Integrity(e))));
                        }
                    },
                    None => {
                        self.done = true;
                        return Poll::Ready(None);
                    }
                },
            }
        }
    }
}

/// Maps a store body error: a fill's verification failure counts as an integrity failure
/// (reported by the one reader that started the fill), anything else is a store failure.
fn store_error(e: &(dyn std::error::Error + Send + Sync + 'static)) -> BodyError {
    match e.downcast_ref::<FillError>() {
        Some(FillError {
            integrity: Some(v),
            report: true,
            ..
        }) => BodyError::Integrity(v.clone()),
        _ => BodyError::Store(e.to_string()),
    }
}

enum Inner {
    Empty,
    Full(Option<Bytes>),
    Upstream(Box<UpstreamStream>),
    Store(StoreBody),
}

/// The body of every response the server sends.
pub struct ResponseBody {
    inner: Inner,
    log: Option<Box<RequestLog>>,
}

impl core::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let kind = match &self.inner {
            Inner::Empty => "empty",
            Inner::Full(_) => "full",
            Inner::Upstream(_) => "upstream",
            Inner::Store(_) => "store",
        };
        f.debug_struct("ResponseBody")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

impl ResponseBody {
    /// No body.
    pub fn empty() -> Self {
        Self {
            inner: Inner::Empty,
            log: None,
        }
    }

    /// Fixed bytes.
    pub fn full(bytes: Bytes) -> Self {
        Self {
            inner: Inner::Full(Some(bytes)),
            log: None,
        }
    }

    /// A relayed upstream body.
    pub fn upstream(stream: UpstreamStream) -> Self {
        Self {
            inner: Inner::Upstream(Box::new(stream)),
            log: None,
        }
    }

    /// A body read from the store.
    pub fn store(body: StoreBody) -> Self {
        Self {
            inner: Inner::Store(body),
            log: None,
        }
    }

    /// Attaches the access-log record, emitted when the body is dropped.
    pub fn with_log(mut self, log: RequestLog) -> Self {
        self.log = Some(Box::new(log));
        self
    }

    fn finish(&mut self, outcome: Outcome) {
        if let Some(log) = self.log.as_mut() {
            log.set_outcome(outcome);
        }
    }

    fn abort(&mut self, e: &BodyError) {
        if let Some(log) = self.log.as_mut() {
            tracing::warn!(registry = %log.registry, error = %e, "response body aborted");
            if matches!(e, BodyError::Integrity(_)) {
                log.state()
                    .metrics
                    .integrity_failure(&log.registry, log.kind);
            }
            log.set_outcome(Outcome::Aborted(e.to_string()));
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let next = match &mut this.inner {
            Inner::Empty => Poll::Ready(None),
            Inner::Full(bytes) => Poll::Ready(bytes.take().map(Ok)),
            Inner::Upstream(stream) => stream.poll_next(cx),
            Inner::Store(body) => match Pin::new(body).poll_frame(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(store_error(&*e)))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => Poll::Ready(Some(Ok(data))),
                    // Trailers from the store are not expected; end the body there.
                    Err(_) => Poll::Ready(None),
                },
            },
        };
        match next {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                this.finish(Outcome::Complete);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.abort(&e);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(data))) => {
                if let Some(log) = this.log.as_mut() {
                    log.add_bytes(data.len());
                }
                if this.is_end_stream() {
                    this.finish(Outcome::Complete);
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Empty | Inner::Full(None) => true,
            Inner::Full(Some(_)) => false,
            Inner::Upstream(s) => s.done && s.tail.is_none(),
            Inner::Store(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Empty | Inner::Full(None) => SizeHint::with_exact(0),
            Inner::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            // Framing follows the Content-Length the exchange relayed (never re-chunked).
            Inner::Upstream(_) => SizeHint::default(),
            Inner::Store(b) => b.size_hint(),
        }
    }
}
