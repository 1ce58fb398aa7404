//! The `wasi:http`, `wasi:io` and `wasi:clocks` calls the component makes: sending an upstream
//! request with the core's deadlines, bounded and chunked body reads, and writes to the client.
//!
//! Resource order matters to `wasi:http` hosts: a child resource (an input stream of a body, an
//! output stream of an outgoing body) must be dropped before its parent. The structs here declare
//! their fields child first, so Rust's field drop order is the right one.
//!
//! Deadlines (SECURITY.md §2.5): the connect, first-byte and between-bytes timeouts are passed to
//! the host as `request-options` and are also enforced here with `wasi:clocks` timers, so a host
//! that ignores the options still cannot make the component wait forever.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use dockerproxy_core::Timestamp;
use dockerproxy_core::config::Limits;
use dockerproxy_core::exchange::{UpstreamBody, UpstreamError, UpstreamHead, UpstreamRequest};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use wasip2::clocks::{monotonic_clock, wall_clock};
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, FutureIncomingResponse, IncomingBody, IncomingResponse, Method,
    OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
};
use wasip2::io::poll::{Pollable, poll};
use wasip2::io::streams::{InputStream, OutputStream, StreamError};

use crate::outbound::{authority, is_forbidden_header, nanos, path_with_query};

/// Largest chunk asked of an input stream in one read.
const CHUNK: u64 = 64 * 1024;

/// The current wall-clock time as the core's [`Timestamp`].
pub(crate) fn now() -> Timestamp {
    let t = wall_clock::now();
    let ms = t
        .seconds
        .saturating_mul(1000)
        .saturating_add(u64::from(t.nanoseconds / 1_000_000));
    Timestamp::from_millis(ms)
}

/// Waits until `pollable` is ready or `timeout` passes; true when it is ready.
pub(crate) fn wait_ready(pollable: &Pollable, timeout: Duration) -> bool {
    let timer = monotonic_clock::subscribe_duration(nanos(timeout));
    poll(&[pollable, &timer]).contains(&0)
}

/// Sleeps for `d`.
pub(crate) fn sleep(d: Duration) {
    monotonic_clock::subscribe_duration(nanos(d)).block();
}

/// `wasi:http` fields from a header map; headers the host forbids (and invalid ones) are left out.
pub(crate) fn fields(headers: &HeaderMap) -> Fields {
    let f = Fields::new();
    for (name, value) in headers {
        if !is_forbidden_header(name) {
            // A refused header (invalid for the host) is dropped rather than failing the request.
            let _ = f.append(name.as_str(), value.as_bytes());
        }
    }
    f
}

/// A header map from `wasi:http` fields (repeated names kept).
pub(crate) fn header_map(fields: &Fields) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in fields.entries() {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(&value),
        ) {
            map.append(n, v);
        }
    }
    map
}

/// The `wasi:http` method of an `http` method.
pub(crate) fn wasi_method(m: &http::Method) -> Method {
    match m.as_str() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "CONNECT" => Method::Connect,
        "OPTIONS" => Method::Options,
        "TRACE" => Method::Trace,
        "PATCH" => Method::Patch,
        other => Method::Other(other.to_owned()),
    }
}

/// The `http` method of a `wasi:http` method (an extension method that `http` cannot represent
/// becomes `TRACE`, which the core refuses like any unsupported method).
pub(crate) fn http_method(m: &Method) -> http::Method {
    match m {
        Method::Get => http::Method::GET,
        Method::Head => http::Method::HEAD,
        Method::Post => http::Method::POST,
        Method::Put => http::Method::PUT,
        Method::Delete => http::Method::DELETE,
        Method::Connect => http::Method::CONNECT,
        Method::Options => http::Method::OPTIONS,
        Method::Trace => http::Method::TRACE,
        Method::Patch => http::Method::PATCH,
        Method::Other(s) => http::Method::from_bytes(s.as_bytes()).unwrap_or(http::Method::TRACE),
    }
}

/// A body being read: the stream (child) before the body (parent) and what owns it.
pub(crate) struct BodyReader {
    stream: InputStream,
    _body: IncomingBody,
    _response: Option<IncomingResponse>,
    _future: Option<FutureIncomingResponse>,
    /// `Content-Length`, when the sender gave one.
    content_length: Option<u64>,
}

impl BodyReader {
    /// A reader of the client's request body.
    pub(crate) fn client(body: IncomingBody, content_length: Option<u64>) -> Option<Self> {
        let stream = body.stream().ok()?;
        Some(Self {
            stream,
            _body: body,
            _response: None,
            _future: None,
            content_length,
        })
    }

    /// `Content-Length` of the body, if known.
    pub(crate) fn content_length(&self) -> Option<u64> {
        self.content_length
    }

    /// The next chunk; `None` at the end. A stall longer than `idle` or a transport error is
    /// [`UpstreamError::BodyFailed`].
    pub(crate) fn next_chunk(&mut self, idle: Duration) -> Result<Option<Vec<u8>>, UpstreamError> {
        loop {
            match self.stream.read(CHUNK) {
                Ok(v) if !v.is_empty() => return Ok(Some(v)),
                Ok(_) => {
                    if !wait_ready(&self.stream.subscribe(), idle) {
                        return Err(UpstreamError::BodyFailed);
                    }
                }
                Err(StreamError::Closed) => return Ok(None),
                Err(StreamError::LastOperationFailed(_)) => return Err(UpstreamError::BodyFailed),
            }
        }
    }

    /// Reads the whole (small) body: at most `limit` bytes, refused early on a larger
    /// `Content-Length`.
    pub(crate) fn read_all(mut self, limit: usize, idle: Duration) -> Result<Bytes, UpstreamError> {
        if self
            .content_length
            .is_some_and(|n| n > u64::try_from(limit).unwrap_or(u64::MAX))
        {
            return Err(UpstreamError::TooLarge);
        }
        let mut buf = BytesMut::new();
        while let Some(chunk) = self.next_chunk(idle)? {
            if chunk.len() > limit.saturating_sub(buf.len()) {
                return Err(UpstreamError::TooLarge);
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }
}

/// An outgoing body being written: the stream (child) before the body (parent).
pub(crate) struct BodyWriter {
    stream: Option<OutputStream>,
    body: OutgoingBody,
    /// How long one write may wait for the reader to make room.
    stall: Duration,
}

impl BodyWriter {
    /// A writer of `body`; `None` when the host refuses its stream.
    pub(crate) fn new(body: OutgoingBody, stall: Duration) -> Option<Self> {
        let stream = body.write().ok()?;
        Some(Self {
            stream: Some(stream),
            body,
            stall,
        })
    }

    /// Writes all of `data`, waiting for room; `Err` when the reader is gone or stalled.
    pub(crate) fn write_all(&mut self, mut data: &[u8]) -> Result<(), ()> {
        let stream = self.stream.as_ref().ok_or(())?;
        while !data.is_empty() {
            let room = stream.check_write().map_err(|_| ())?;
            if room == 0 {
                if !wait_ready(&stream.subscribe(), self.stall) {
                    return Err(());
                }
                continue;
            }
            let n = usize::try_from(room).unwrap_or(usize::MAX).min(data.len());
            stream.write(&data[..n]).map_err(|_| ())?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Flushes and finishes the body cleanly.
    pub(crate) fn finish(mut self) -> Result<(), ()> {
        if let Some(stream) = self.stream.take() {
            stream.blocking_flush().map_err(|_| ())?;
        }
        OutgoingBody::finish(self.body, None).map_err(|_| ())
    }

    /// Abandons the body: dropped unfinished, which the host reports to the reader as an error
    /// (the client's response is aborted, never completed).
    pub(crate) fn abort(self) {
        drop(self);
    }
}

/// Sends `req`, streaming `client` when the body is [`UpstreamBody::Client`], and waits for the
/// response head within the header timeout.
pub(crate) fn send(
    req: &UpstreamRequest,
    limits: &Limits,
    client: &mut Option<BodyReader>,
) -> Result<(UpstreamHead, BodyReader), UpstreamError> {
    let mut headers = req.headers.clone();
    if let UpstreamBody::Bytes(b) = &req.body
        && !headers.contains_key(http::header::CONTENT_LENGTH)
    {
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(b.len()));
    }
    let request = OutgoingRequest::new(fields(&headers));
    let scheme = match req.url.scheme() {
        "https" => Scheme::Https,
        "http" => Scheme::Http,
        _ => return Err(UpstreamError::Unreachable),
    };
    let auth = authority(&req.url).ok_or(UpstreamError::Unreachable)?;
    let target = path_with_query(&req.url);
    request
        .set_method(&wasi_method(&req.method))
        .and_then(|()| request.set_scheme(Some(&scheme)))
        .and_then(|()| request.set_authority(Some(&auth)))
        .and_then(|()| request.set_path_with_query(Some(&target)))
        .map_err(|()| UpstreamError::Unreachable)?;
    let body = request.body().map_err(|()| UpstreamError::Unreachable)?;

    let options = RequestOptions::new();
    // A host that does not support an option keeps its own; the timers below still apply.
    let _ = options.set_connect_timeout(Some(nanos(limits.connect_timeout)));
    let _ = options.set_first_byte_timeout(Some(nanos(limits.header_timeout)));
    let _ = options.set_between_bytes_timeout(Some(nanos(limits.idle_timeout)));

    let future = outgoing_handler::handle(request, Some(options)).map_err(|e| map_error(&e))?;
    write_request_body(body, &req.body, client, limits)?;

    let pollable = future.subscribe();
    if !wait_ready(&pollable, limits.header_timeout) {
        return Err(UpstreamError::Timeout);
    }
    drop(pollable);
    let response = match future.get() {
        Some(Ok(Ok(r))) => r,
        Some(Ok(Err(e))) => return Err(map_error(&e)),
        Some(Err(())) | None => return Err(UpstreamError::Unreachable),
    };
    let status = StatusCode::from_u16(response.status()).map_err(|_| UpstreamError::Unreachable)?;
    let headers = header_map(&response.headers());
    let content_length = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let body = response
        .consume()
        .map_err(|()| UpstreamError::Unreachable)?;
    let stream = body.stream().map_err(|()| UpstreamError::Unreachable)?;
    let reader = BodyReader {
        stream,
        _body: body,
        _response: Some(response),
        _future: Some(future),
        content_length,
    };
    Ok((UpstreamHead { status, headers }, reader))
}

/// Writes the upstream request's body and finishes it.
fn write_request_body(
    body: OutgoingBody,
    plan: &UpstreamBody,
    client: &mut Option<BodyReader>,
    limits: &Limits,
) -> Result<(), UpstreamError> {
    let mut writer =
        BodyWriter::new(body, limits.idle_timeout).ok_or(UpstreamError::Unreachable)?;
    match plan {
        UpstreamBody::Empty => {}
        UpstreamBody::Bytes(b) => writer
            .write_all(b)
            .map_err(|()| UpstreamError::Unreachable)?,
        UpstreamBody::Client => {
            if let Some(mut reader) = client.take() {
                while let Some(chunk) = reader.next_chunk(limits.client_header_timeout)? {
                    writer
                        .write_all(&chunk)
                        .map_err(|()| UpstreamError::Unreachable)?;
                }
            }
        }
    }
    writer.finish().map_err(|()| UpstreamError::Unreachable)
}

/// The core's view of a `wasi:http` error code: timeouts are timeouts, a host refusal is a
/// denial, the rest is an unreachable upstream.
fn map_error(e: &ErrorCode) -> UpstreamError {
    match e {
        ErrorCode::DnsTimeout
        | ErrorCode::ConnectionTimeout
        | ErrorCode::ConnectionReadTimeout
        | ErrorCode::HttpResponseTimeout => UpstreamError::Timeout,
        ErrorCode::HttpRequestDenied | ErrorCode::DestinationIpProhibited => UpstreamError::Denied,
        _ => UpstreamError::Unreachable,
    }
}
