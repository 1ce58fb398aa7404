//! Serves blobs straight from a distribution storage directory, the way a CDN in front of the
//! registry's object store would: the digest is the last path segment (`…/sha256:<hex>`), the
//! bytes come from `docker/registry/v2/blobs/sha256/<xx>/<hex>/data`, and single `Range`
//! requests are honoured (TESTBED §7.4: clamp the end, `416` with `bytes */SIZE` past the end).

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Response;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;

use crate::serve::{BoxError, RespBody, empty, respond};

/// The file holding blob `sha256:<hex>` in a distribution storage root.
pub fn blob_path(storage: &Path, hex: &str) -> PathBuf {
    let prefix = hex.get(..2).unwrap_or("00");
    storage
        .join("docker/registry/v2/blobs/sha256")
        .join(prefix)
        .join(hex)
        .join("data")
}

/// The 64-hex part of a path's last segment `sha256:<hex>`, if the segment is one.
pub fn digest_hex_of_path(path: &str) -> Option<&str> {
    let last = path.rsplit('/').next()?;
    let hex = last.strip_prefix("sha256:")?;
    let valid = hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    valid.then_some(hex)
}

/// What a `Range` header asks of a body of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// No (usable) range: the whole body, 200.
    Full,
    /// Bytes `start..=end`, 206.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// Not satisfiable, 416.
    Unsatisfiable,
}

/// Interprets a single-range `Range` header (`bytes=a-b`, `bytes=a-`, `bytes=-n`); anything
/// else (several ranges, other units, garbage) is answered in full.
pub fn interpret_range(header: Option<&str>, size: u64) -> RangeAnswer {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeAnswer::Full;
    };
    if spec.contains(',') {
        return RangeAnswer::Full;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return RangeAnswer::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // Suffix range: the last n bytes.
        let Ok(n) = last.parse::<u64>() else {
            return RangeAnswer::Full;
        };
        if n == 0 || size == 0 {
            return RangeAnswer::Unsatisfiable;
        }
        return RangeAnswer::Partial {
            start: size.saturating_sub(n),
            end: size - 1,
        };
    }
    let Ok(start) = first.parse::<u64>() else {
        return RangeAnswer::Full;
    };
    let end = if last.is_empty() {
        u64::MAX
    } else {
        match last.parse::<u64>() {
            Ok(end) if end >= start => end,
            _ => return RangeAnswer::Full,
        }
    };
    if start >= size {
        return RangeAnswer::Unsatisfiable;
    }
    RangeAnswer::Partial {
        start,
        end: end.min(size - 1),
    }
}

/// Answers a GET or HEAD for the blob named by `path` from `storage`, honouring `range`.
pub async fn serve_blob(
    storage: &Path,
    path: &str,
    head: bool,
    range: Option<&str>,
) -> Response<RespBody> {
    let Some(hex) = digest_hex_of_path(path) else {
        return respond(404, "text/plain", "not a blob path\n");
    };
    let file_path = blob_path(storage, hex);
    let Ok(mut file) = tokio::fs::File::open(&file_path).await else {
        return respond(404, "text/plain", "blob not found\n");
    };
    let Ok(size) = file.metadata().await.map(|m| m.len()) else {
        return respond(500, "text/plain", "stat failed\n");
    };
    let (status, start, len) = match interpret_range(range, size) {
        RangeAnswer::Full => (200, 0, size),
        RangeAnswer::Partial { start, end } => (206, start, end - start + 1),
        RangeAnswer::Unsatisfiable => {
            let mut resp = respond(416, "text/plain", "");
            insert(&mut resp, "content-range", &format!("bytes */{size}"));
            return resp;
        }
    };
    let body = if head || len == 0 {
        empty()
    } else if file.seek(SeekFrom::Start(start)).await.is_err() {
        return respond(500, "text/plain", "seek failed\n");
    } else {
        stream_file(file, len)
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    insert(&mut resp, "content-type", "application/octet-stream");
    insert(&mut resp, "content-length", &len.to_string());
    insert(&mut resp, "accept-ranges", "bytes");
    insert(&mut resp, "etag", &format!("\"sha256:{hex}\""));
    if status == 206 {
        let end = start + len - 1;
        insert(
            &mut resp,
            "content-range",
            &format!("bytes {start}-{end}/{size}"),
        );
    }
    resp
}

fn insert(resp: &mut Response<RespBody>, name: &'static str, value: &str) {
    if let Ok(value) = http::HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, value);
    }
}

/// Streams `len` bytes of `file` (already positioned) in 256 KiB chunks.
fn stream_file(mut file: tokio::fs::File, len: u64) -> RespBody {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        let mut remaining = len;
        while remaining > 0 {
            let want = usize::try_from(remaining.min(256 * 1024)).unwrap_or(256 * 1024);
            let mut buf = vec![0u8; want];
            let item = match file.read(&mut buf).await {
                Ok(0) => Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "blob shrank",
                )),
                Ok(n) => {
                    buf.truncate(n);
                    remaining -= n as u64;
                    Ok(Bytes::from(buf))
                }
                Err(e) => Err(e),
            };
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                return;
            }
        }
    });
    ChannelBody { rx }.boxed()
}

/// A body fed by a channel; an `Err` item aborts the response (and the connection).
#[derive(Debug)]
pub struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(data))) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeAnswer::*;
        assert_eq!(interpret_range(None, 11), Full);
        assert_eq!(
            interpret_range(Some("bytes=6-11"), 11),
            Partial { start: 6, end: 10 }
        );
        assert_eq!(
            interpret_range(Some("bytes=6-"), 11),
            Partial { start: 6, end: 10 }
        );
        assert_eq!(
            interpret_range(Some("bytes=-3"), 11),
            Partial { start: 8, end: 10 }
        );
        assert_eq!(interpret_range(Some("bytes=11-"), 11), Unsatisfiable);
        assert_eq!(interpret_range(Some("bytes=0-1,4-5"), 11), Full);
        assert_eq!(interpret_range(Some("bytes=5-2"), 11), Full);
        assert_eq!(interpret_range(Some("items=0-1"), 11), Full);
    }

    #[test]
    fn digest_from_path() {
        let hex = "a".repeat(64);
        assert_eq!(
            digest_hex_of_path(&format!("/v2/x/y/blobs/sha256:{hex}")),
            Some(hex.as_str())
        );
        assert_eq!(digest_hex_of_path("/v2/x/blobs/sha256:abc"), None);
        assert_eq!(digest_hex_of_path("/v2/x/manifests/latest"), None);
        assert!(blob_path(Path::new("/s"), &hex).ends_with(format!("aa/{hex}/data")));
    }
}
