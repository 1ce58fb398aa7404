//! Bodies read from the store: a committed file, or a fill in flight tailed as it grows
//! (DESIGN.md §4). Each body is fed by a small task that reads with positioned reads and
//! sends chunks through a bounded channel, so a slow client slows only its own reads.
//!
//! A body never ends cleanly with fewer bytes than announced: a short file, a failed fill or a
//! vanished writer ends it with an error (hyper then aborts the response). The last byte of any
//! range read from a fill is held until the fill's digest is confirmed, so a clean end always
//! means verified bytes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use super::ReadGuard;
use super::fill::{Attachment, Fill};
use crate::store::StoreBody;
use crate::upstream::BoxError;

/// Bytes per positioned read.
const CHUNK: u64 = 128 * 1024;

/// Chunks queued between a body's read task and hyper. With hyper's own write buffer (up to
/// about two chunks) and the chunk being read, a stream holds at most about
/// `(QUEUE + 3) × CHUNK` = 640 KiB: 64 parallel downloads stay near 40 MiB (issue 7: peak RSS
/// ≤ 64 MiB; 256 KiB × 4 reached 94 MiB).
const QUEUE: usize = 2;

/// Where a body reads from.
pub enum ReadSource {
    /// A committed file (the guard keeps eviction away while it is read).
    File {
        /// The open file.
        file: Arc<File>,
        /// Reader count guard.
        guard: Option<ReadGuard>,
    },
    /// A fill in flight.
    Fill {
        /// The fill.
        fill: Arc<Fill>,
        /// Its progress and spill channels.
        attachment: Attachment,
        /// This reader reports a failure in metrics (the client that started the fill).
        report: bool,
    },
}

/// A body serving `[start, end)` of `source`.
pub fn body(source: ReadSource, start: u64, end: u64) -> StoreBody {
    let (tx, rx) = mpsc::channel(QUEUE);
    // `u64::MAX` as the end means "until the fill's verified end" (no announced length).
    let remaining = (end != u64::MAX).then(|| end.saturating_sub(start));
    tokio::spawn(async move {
        let r = match source {
            ReadSource::File { file, guard } => {
                let r = pump_file(&file, start, end, &tx).await;
                drop(guard);
                r
            }
            ReadSource::Fill {
                fill,
                attachment,
                report,
            } => pump_fill(&fill, attachment, report, start, end, &tx).await,
        };
        // An empty chunk marks the clean end; a closed channel without it is an error.
        let last = match r {
            Ok(()) => Ok(Bytes::new()),
            Err(Gone) => return,
            Err(Failed(e)) => Err(e),
        };
        let _ = tx.send(last).await;
    });
    ReaderBody {
        rx,
        remaining,
        ended: false,
    }
    .boxed()
}

/// A body serving `[start, end)` of `inner`, a stream that ends cleanly only once its bytes
/// are verified (an upstream body through the verifier). `inner` is read to its end even past
/// the range, and the last byte of the range is held until then: a clean end of this body
/// always means verified bytes, and any failure of `inner` aborts it.
pub fn slice<B>(inner: B, start: u64, end: u64) -> StoreBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError> + Send,
{
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(async move {
        let last = match pump_slice(inner, start, end, &tx).await {
            Ok(()) => Ok(Bytes::new()),
            Err(Gone) => return,
            Err(Failed(e)) => Err(e),
        };
        let _ = tx.send(last).await;
    });
    ReaderBody {
        rx,
        remaining: Some(end.saturating_sub(start)),
        ended: false,
    }
    .boxed()
}

async fn pump_slice<B>(inner: B, start: u64, end: u64, tx: &Tx) -> Result<(), Stop>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError> + Send,
{
    let mut inner = std::pin::pin!(inner);
    // Offset of the next byte of `inner`.
    let mut pos = 0u64;
    let mut held: Option<Bytes> = None;
    loop {
        let frame = tokio::select! {
            biased;
            () = tx.closed() => return Err(Gone),
            f = inner.frame() => f,
        };
        let data = match frame {
            None => break,
            Some(Err(e)) => return Err(Failed(e.into())),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
        };
        let (a, b) = (pos, pos.saturating_add(data.len() as u64));
        pos = b;
        let (lo, hi) = (a.max(start), b.min(end));
        if lo >= hi {
            continue;
        }
        let (from, to) = (
            usize::try_from(lo - a).unwrap_or(usize::MAX),
            usize::try_from(hi - a).unwrap_or(usize::MAX),
        );
        let mut part = data.slice(from..to);
        if hi == end {
            // The range's last byte waits for the verified end of `inner`.
            held = Some(part.split_off(part.len() - 1));
        }
        if !part.is_empty() {
            send(tx, part).await?;
        }
    }
    match held {
        Some(last) => send(tx, last).await,
        None if start >= end => Ok(()),
        None => Err(Failed(err("upstream body ended before the range"))),
    }
}

/// A read error or short read, as a body error.
#[derive(Debug)]
struct ReadError(String);

impl core::fmt::Display for ReadError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ReadError {}

fn err(msg: impl Into<String>) -> BoxError {
    Box::new(ReadError(msg.into()))
}

/// Reads `len` bytes at `pos` (fewer only at end of file).
async fn read_at(file: &Arc<File>, pos: u64, len: u64) -> std::io::Result<Bytes> {
    let file = file.clone();
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    let r = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < buf.len() {
            match file.read_at(&mut buf[got..], pos + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(got);
        Ok(Bytes::from(buf))
    })
    .await;
    r.unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
}

type Tx = mpsc::Sender<Result<Bytes, BoxError>>;

/// Why a pump stopped early.
enum Stop {
    /// The client went away.
    Gone,
    /// The body must end with this error.
    Failed(BoxError),
}
use Stop::{Failed, Gone};

async fn send(tx: &Tx, b: Bytes) -> Result<(), Stop> {
    tx.send(Ok(b)).await.map_err(|_| Gone)
}

async fn pump_file(file: &Arc<File>, start: u64, end: u64, tx: &Tx) -> Result<(), Stop> {
    let mut pos = start;
    while pos < end {
        let want = (end - pos).min(CHUNK);
        match read_at(file, pos, want).await {
            Ok(b) if b.len() as u64 == want => {
                pos += want;
                send(tx, b).await?;
            }
            Ok(_) => return Err(Failed(err("cached file is shorter than its entry"))),
            Err(e) => return Err(Failed(err(format!("cache read failed: {e}")))),
        }
    }
    Ok(())
}

async fn pump_fill(
    fill: &Arc<Fill>,
    mut att: Attachment,
    report: bool,
    start: u64,
    mut end: u64,
    tx: &Tx,
) -> Result<(), Stop> {
    let mut pos = start;
    // Spilled bytes (after a writer detach) covering [spill_base, spill_base + spill.len()).
    let mut spill_base = 0u64;
    let mut spill = BytesMut::new();
    let mut spill_open = true;
    let mut progress_open = true;
    loop {
        let p = att.progress.borrow_and_update().clone();
        if let Some(mut e) = p.failed {
            e.report = report;
            return Err(Failed(Box::new(e)));
        }
        if p.done {
            end = end.min(p.released);
        }
        if pos >= end {
            return if p.done || end != u64::MAX {
                Ok(())
            } else {
                Err(Failed(err("blob fill ended early")))
            };
        }
        // The last byte of the range waits for the digest check.
        let limit = if p.done { end } else { end - 1 };
        let disk = p.on_disk.min(limit);
        if pos < disk {
            let want = (disk - pos).min(CHUNK);
            match read_at(&fill.file, pos, want).await {
                Ok(b) if b.len() as u64 == want => {
                    pos += want;
                    send(tx, b).await?;
                    continue;
                }
                Ok(_) => return Err(Failed(err("fill file shorter than its progress"))),
                Err(e) => return Err(Failed(err(format!("fill read failed: {e}")))),
            }
        }
        if pos >= p.on_disk && !spill.is_empty() {
            let skip = pos.saturating_sub(spill_base).min(spill.len() as u64);
            spill.advance(usize::try_from(skip).unwrap_or(0));
            spill_base += skip;
            let upto = (spill_base + spill.len() as u64).min(limit);
            if upto > pos && spill_base == pos {
                let n = usize::try_from(upto - pos).unwrap_or(0);
                let chunk = spill.split_to(n).freeze();
                spill_base = upto;
                pos = upto;
                send(tx, chunk).await?;
                continue;
            }
        }
        if (p.done && !spill_open) || !progress_open {
            // Nothing more can arrive.
            return Err(Failed(err("blob fill ended short")));
        }
        tokio::select! {
            biased;
            () = tx.closed() => return Err(Gone),
            r = att.progress.changed(), if progress_open => {
                if r.is_err() {
                    progress_open = false;
                }
            }
            m = att.spill.recv(), if spill_open => match m {
                Some((off, data)) => {
                    if spill.is_empty() {
                        spill_base = off;
                    } else if off != spill_base + spill.len() as u64 {
                        return Err(Failed(err("blob fill spill out of order")));
                    }
                    spill.extend_from_slice(&data);
                    // Only this reader's range is kept.
                    let keep = end.saturating_sub(spill_base).min(spill.len() as u64);
                    spill.truncate(usize::try_from(keep).unwrap_or(0));
                }
                None => spill_open = false,
            },
        }
    }
}

/// The body handed to hyper.
struct ReaderBody {
    rx: mpsc::Receiver<Result<Bytes, BoxError>>,
    /// Bytes still to come, when known.
    remaining: Option<u64>,
    /// The end (clean or not) was reported.
    ended: bool,
}

impl Body for ReaderBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.ended || this.remaining == Some(0) {
            return Poll::Ready(None);
        }
        match this.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(b))) if b.is_empty() => {
                this.ended = true;
                if this.remaining.is_some_and(|r| r > 0) {
                    return Poll::Ready(Some(Err(err("store body ended early"))));
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(b))) => {
                if let Some(r) = this.remaining.as_mut() {
                    if b.len() as u64 > *r {
                        this.ended = true;
                        return Poll::Ready(Some(Err(err("store body longer than announced"))));
                    }
                    *r -= b.len() as u64;
                }
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            Poll::Ready(Some(Err(e))) => {
                this.ended = true;
                this.rx.close();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.ended = true;
                Poll::Ready(Some(Err(err("store body ended early"))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(r) if !self.ended => SizeHint::with_exact(r),
            _ => SizeHint::default(),
        }
    }
}
